"""Cascade Mask R-CNN, MViTv2-S (ImageNet-1K init), LSJ 1024, 3x schedule (36 epochs).

The published Detectron2 model of this size was trained with another recipe, multi-scale
training: ``published/cascade_mask_rcnn_mvitv2_s_3x.py`` (docs/recipes.md).
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

model.backbone.bottom_up.update(mvit_preset("S"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("S_in1k")
