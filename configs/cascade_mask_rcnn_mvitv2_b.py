"""Cascade Mask R-CNN, MViTv2-B (ImageNet-1K init), LSJ 1024, 3x schedule (36 epochs).

Published COCO val box / mask AP of the reference implementation: 54.1 / 46.7.
"""

from mvit_det import mvit_preset

from .common.cascade_mask_rcnn_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("B"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in1k")
