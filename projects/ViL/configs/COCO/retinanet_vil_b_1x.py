"""RetinaNet, ViL-Base (deep) (ImageNet-21K init), 1x schedule.

Published COCO val box AP: 47.8.
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

model.backbone.bottom_up.update(vil_preset("B", drop_path_rate=0.3))
train.init_checkpoint = imagenet_weights("B")
