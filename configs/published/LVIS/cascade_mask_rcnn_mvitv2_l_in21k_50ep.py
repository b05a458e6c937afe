"""LVIS v1: Cascade Mask R-CNN, MViTv2-L (ImageNet-21K init), the ViTDet recipe, 50 epochs.

78,125 iterations at 64 images, LR x0.1 at 69,444 and 75,231, 250 warmup iterations, lr 4e-5.
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

model.backbone.bottom_up.update(mvit_preset("L"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("L_in21k")
optimizer.lr = 4e-5  # at 64 images per iteration

train.max_iter = 78125  # 156250 // 2
lr_multiplier.scheduler.milestones = [69444, 75231]
lr_multiplier.warmup_length = 250 / train.max_iter
