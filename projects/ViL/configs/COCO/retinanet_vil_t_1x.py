"""RetinaNet, ViL-Tiny (ImageNet-1K init), 1x schedule.

Published COCO val box AP: 40.8.
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

model.backbone.bottom_up.update(vil_preset("T", drop_path_rate=0.05))
train.init_checkpoint = imagenet_weights("T")
