"""Root config: RetinaNet with an MViTv2 + FPN backbone (P3-P7), LSJ 1024, 3x schedule.

The FPN takes scale3-scale5 (strides 8-32) and adds P6 and P7 by stride-2 3x3 convs on P5; the
head, anchors (3 scales x 3 ratios per level) and focal loss are Detectron2's RetinaNet. Data
(LSJ, boxes only), AdamW, schedule and ImageNet RGB normalisation are those of the Mask R-CNN
recipes. The size-specific files (configs/retinanet_mvitv2_{t,s,b}.py) pick the MViTv2 size;
this file is MViTv2-B. configs/retinanet_mvitv2_b_sfp.py swaps the FPN for a simple feature
pyramid built from the last stage alone (ViTDet-style).
"""

from functools import partial

import torch.nn as nn

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from mvit_det import MViT, mvit_preset

from .mask_rcnn_mvitv2 import IMAGENET_WEIGHTS, dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/retinanet.py").model
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

model.backbone.bottom_up = L(MViT)(
    **mvit_preset("B"),
    residual_pooling=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
# P6 from the FPN's P5 (256 channels), not from the backbone's last map.
model.backbone.top_block = L(LastLevelP6P7)(
    in_channels="${..out_channels}", out_channels="${..out_channels}", in_feature="p5"
)

# Boxes only: no instance masks; LSJ crops clip the boxes.
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.recompute_boxes = False

train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in1k")
