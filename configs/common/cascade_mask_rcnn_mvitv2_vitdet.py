"""Root config: Cascade Mask R-CNN with MViTv2 in the ViTDet recipe (COCO, MViTv2-B IN-21K, 100ep).

The Cascade Mask R-CNN of ``cascade_mask_rcnn_mvitv2.py`` with the changes of the ViTDet study:
LayerNorm instead of no norm in the FPN and instead of BatchNorm in the box and mask heads, images
padded to 1024 x 1024 squares by the backbone (the LSJ crop does not pad), evaluation with the
longer side at 1024, weight decay on everything but norms and ``pos_embed`` (the relative-position
tables decay too), lr 8e-5 and 100 epochs (184,375 iterations at 64 images).
"""

from mvit_det import mvit_preset
from mvit_det.data import lsj_test_augmentations

from .cascade_mask_rcnn_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("B"))
model.backbone.norm = "LN"
model.backbone.square_pad = 1024
for box_head in model.roi_heads.box_heads:
    box_head.conv_norm = "LN"
model.roi_heads.mask_head.conv_norm = "LN"

dataloader.train.mapper.augmentations[2].pad = False  # the backbone pads to the square
dataloader.test.mapper.augmentations = lsj_test_augmentations(1024)

optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
optimizer.lr = 8e-5  # at 64 images per iteration

# 100 epochs: 184,375 iterations x 64 images / 118,000 images per epoch.
train.max_iter = 184375
lr_multiplier.scheduler.milestones = [163889, 177546]
lr_multiplier.warmup_length = 250 / train.max_iter
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in21k")
