"""RetinaNet, ViL-Medium (deep) (ImageNet-21K init), 3x schedule, multi-scale training.

Published COCO val box AP: 47.9.
"""

from mvit_det import vil_preset

from ..common.retinanet_vil import dataloader, imagenet_weights, model, optimizer
from ..common.schedule_3x import MULTISCALE_SHORT_EDGES, lr_multiplier, train

model.backbone.bottom_up.update(vil_preset("M", drop_path_rate=0.3))
train.init_checkpoint = imagenet_weights("M")
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=MULTISCALE_SHORT_EDGES, sample_style="choice"
)
