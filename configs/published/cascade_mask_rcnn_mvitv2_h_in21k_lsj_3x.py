"""Cascade Mask R-CNN, MViTv2-H (ImageNet-21K init), LSJ 1024, 3x, the published learning rate.

The LSJ config ``cascade_mask_rcnn_mvitv2_h.py`` with the lr of Detectron2's published MViTv2-H
model: 1.6e-4 (that of T/S/B) instead of 1e-4.
"""

from mvit_det import mvit_preset

from ..common.cascade_mask_rcnn_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("H"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("H_in21k")
optimizer.lr = 1.6e-4  # at 64 images per iteration
