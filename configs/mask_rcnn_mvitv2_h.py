"""Mask R-CNN, MViTv2-H (ImageNet-21K init), LSJ 1024, 3x schedule (36 epochs)."""

from mvit_det import mvit_preset

from .common.mask_rcnn_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("H"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("H_in21k")
optimizer.lr = 1e-4  # at 64 images per iteration
