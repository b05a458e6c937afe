"""LVIS v1: Cascade Mask R-CNN, MViTv2-B (ImageNet-21K init), the ViTDet recipe, 100 epochs.

The root ``common/cascade_mask_rcnn_mvitv2_vitdet_lvis.py`` as it is: repeat-factor sampling,
federated sigmoid loss, 1203 classes, 156,250 iterations at 64 images, lr 1e-4.
"""

from mvit_det import mvit_preset

from ...common.cascade_mask_rcnn_mvitv2_vitdet_lvis import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("B"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in21k")
