"""Mask R-CNN, ViL-Small (ImageNet-1K init), 3x schedule, multi-scale training.

Published COCO val box / mask AP: 47.1 / 42.7.
"""

from mvit_det import vil_preset

from ..common.mask_rcnn_vil import dataloader, imagenet_weights, model, optimizer
from ..common.schedule_3x import MULTISCALE_SHORT_EDGES, lr_multiplier, train

model.backbone.bottom_up.update(vil_preset("S", drop_path_rate=0.2))
train.init_checkpoint = imagenet_weights("S")
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=MULTISCALE_SHORT_EDGES, sample_style="choice"
)
