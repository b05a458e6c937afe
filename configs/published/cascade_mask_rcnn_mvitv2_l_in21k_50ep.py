"""Cascade Mask R-CNN, MViTv2-L (ImageNet-21K init), the ViTDet recipe on COCO, 50 epochs.

The B 100-epoch recipe halved: 92,187 iterations, LR x0.1 at 81,944 and 88,773, lr 8e-5. The
warmup stays 250 / 184,375 of the run (125 iterations), as in the published recipe, which does not
rescale it.
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

model.backbone.bottom_up.update(mvit_preset("L"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("L_in21k")

train.max_iter = 92187  # 184375 // 2
lr_multiplier.scheduler.milestones = [81944, 88773]
