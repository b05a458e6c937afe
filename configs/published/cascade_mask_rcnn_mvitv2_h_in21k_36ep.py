"""Cascade Mask R-CNN, MViTv2-H (ImageNet-21K init), the ViTDet recipe on COCO, 36 epochs.

The ViTDet recipe with the 3x schedule (67,500 iterations, LR x0.1 at 52,500 and 62,500, 250
warmup iterations), lr 1.6e-4, activation checkpointing.
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

model.backbone.bottom_up.update(mvit_preset("H"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("H_in21k")
optimizer.lr = 1.6e-4  # at 64 images per iteration

train.max_iter = 67500
lr_multiplier.scheduler.milestones = [52500, 62500]
lr_multiplier.warmup_length = 250 / train.max_iter
