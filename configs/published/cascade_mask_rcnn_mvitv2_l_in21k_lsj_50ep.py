"""Cascade Mask R-CNN, MViTv2-L (ImageNet-21K init), LSJ 1024, the published 50-epoch schedule.

The LSJ config ``cascade_mask_rcnn_mvitv2_l.py`` trained for 50 epochs (92,187 iterations at 64
images, LR x0.1 at 81,944 and 88,773), as Detectron2's published MViTv2-L model.
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

model.backbone.bottom_up.update(mvit_preset("L"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("L_in21k")
optimizer.lr = 1e-4  # at 64 images per iteration

train.max_iter = 92187  # 184375 // 2
lr_multiplier.scheduler.milestones = [81944, 88773]
lr_multiplier.warmup_length = 250 / train.max_iter
