"""RetinaNet, ViL-Tiny (ImageNet-1K init), 3x schedule, multi-scale training.

Published COCO val box AP: 43.6.
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

model.backbone.bottom_up.update(vil_preset("T", drop_path_rate=0.1))
train.init_checkpoint = imagenet_weights("T")
use_3x_multiscale(dataloader, lr_multiplier, train)
