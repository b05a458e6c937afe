"""RetinaNet, ViL-Tiny (ImageNet-1K init), 3x schedule, multi-scale training.

Published COCO val box AP: 43.6.
"""

from mvit_det import vil_preset

from ..common.retinanet_vil import dataloader, imagenet_weights, model, optimizer
from ..common.schedule_3x import MULTISCALE_SHORT_EDGES, lr_multiplier, train

model.backbone.bottom_up.update(vil_preset("T", drop_path_rate=0.1))
train.init_checkpoint = imagenet_weights("T")
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=MULTISCALE_SHORT_EDGES, sample_style="choice"
)
