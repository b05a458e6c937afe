"""Mask R-CNN, ViL-Small (ImageNet-1K init), 3x schedule, multi-scale training.

Published COCO val box / mask AP: 47.1 / 42.7.
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
from ..common.schedule_3x import use_3x_multiscale

model.backbone.bottom_up.update(vil_preset("S", drop_path_rate=0.2))
train.init_checkpoint = imagenet_weights("S")
use_3x_multiscale(dataloader, lr_multiplier, train)
