"""RetinaNet, ViL-Small (ImageNet-1K init), 1x schedule.

Published COCO val box AP: 44.2.
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

model.backbone.bottom_up.update(vil_preset("S", drop_path_rate=0.1))
train.init_checkpoint = imagenet_weights("S")
