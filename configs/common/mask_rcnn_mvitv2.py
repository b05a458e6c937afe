"""Root config: Mask R-CNN with an MViTv2 + FPN backbone, LSJ 1024, 3x schedule.

The size-specific files (configs/mask_rcnn_mvitv2_{t,s,b,l,h}.py) pick the MViTv2 size, the
ImageNet weights and the learning rate; this file is MViTv2-B.
"""

from functools import partial

import torch.nn as nn

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from mvit_det import MViT, mvit_preset

from .coco_lsj import dataloader
from .optim import optimizer
from .schedule_3x import lr_multiplier, train

IMAGENET_WEIGHTS = "detectron2://ImageNetPretrained/mvitv2/MViTv2_{}.pyth"

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

model.backbone.bottom_up = L(MViT)(
    **mvit_preset("B"),
    residual_pooling=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
# The RPN head keeps Detectron2's default of one 3x3 conv, as the published Mask R-CNN models.

train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in1k")
