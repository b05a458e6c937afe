"""Cascade Mask R-CNN, MViTv2-S (ImageNet-1K init), the published multi-scale recipe, 3x.

Detectron2's published MViTv2-S Cascade Mask R-CNN: the LSJ config
``cascade_mask_rcnn_mvitv2_s.py`` with the multi-scale training data of
``common/coco_multiscale.py`` instead of LSJ; 36 epochs.
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

model.backbone.bottom_up.update(mvit_preset("S"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("S_in1k")
