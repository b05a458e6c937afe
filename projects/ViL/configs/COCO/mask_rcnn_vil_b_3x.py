"""Mask R-CNN, ViL-Base (deep) (ImageNet-21K init), 3x schedule, multi-scale training.

Published COCO val box / mask AP: 49.6 / 44.5.
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

model.backbone.bottom_up.update(vil_preset("B", drop_path_rate=0.3))
train.init_checkpoint = imagenet_weights("B")
use_3x_multiscale(dataloader, lr_multiplier, train)
