"""Cascade Mask R-CNN, MViTv2-B (ImageNet-21K init), the published multi-scale recipe, 3x.

``cascade_mask_rcnn_mvitv2_b_3x.py`` started from the ImageNet-21K weights.
"""

from mvit_det import mvit_preset

from ..common.cascade_mask_rcnn_mvitv2 import (
    IMAGENET_WEIGHTS,
    lr_multiplier,
    model,
    optimizer,
    train,
)
from ..common.coco_multiscale import dataloader

model.backbone.bottom_up.update(mvit_preset("B"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in21k")
