"""RetinaNet, ViL-Medium (deep) (ImageNet-21K init), 3x schedule, multi-scale training.

Published COCO val box AP: 47.9.
"""

from mvit_det import vil_preset

from ..common.retinanet_vil import (
    dataloader,
    imagenet_weights,
    lr_multiplier,
    model,
    optimizer,
    train,
)
from ..common.schedule_3x import use_3x_multiscale

model.backbone.bottom_up.update(vil_preset("M", drop_path_rate=0.3))
train.init_checkpoint = imagenet_weights("M")
use_3x_multiscale(dataloader, lr_multiplier, train)
