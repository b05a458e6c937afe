"""Cascade Mask R-CNN, MViTv2-T (ImageNet-1K init), LSJ 1024, 3x schedule (36 epochs).

Published COCO val box / mask AP of the reference implementation: 52.2 / 45.0.
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

model.backbone.bottom_up.update(mvit_preset("T"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("T_in1k")
