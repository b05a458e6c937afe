"""Mask R-CNN, ViL-Base (deep) (ImageNet-21K init), 1x schedule.

Published COCO val box / mask AP: 48.6 / 43.6.
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

model.backbone.bottom_up.update(vil_preset("B", drop_path_rate=0.3))
train.init_checkpoint = imagenet_weights("B")
