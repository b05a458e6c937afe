"""Mask R-CNN, ViL-Small (ImageNet-1K init), 1x schedule.

Published COCO val box / mask AP: 44.9 / 41.1.
"""

from mvit_det import vil_preset

from ..common.mask_rcnn_vil import (
    dataloader,
    imagenet_weights,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(vil_preset("S", drop_path_rate=0.2))
train.init_checkpoint = imagenet_weights("S")
