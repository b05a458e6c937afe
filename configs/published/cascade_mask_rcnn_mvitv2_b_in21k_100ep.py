"""Cascade Mask R-CNN, MViTv2-B (ImageNet-21K init), the ViTDet recipe on COCO, 100 epochs.

The root ``common/cascade_mask_rcnn_mvitv2_vitdet.py`` as it is: LSJ 1024 with square padding,
LayerNorm in the FPN and heads, lr 8e-5, 184,375 iterations at 64 images.
"""

from mvit_det import mvit_preset

from ..common.cascade_mask_rcnn_mvitv2_vitdet import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("B"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in21k")
