"""RetinaNet variant of the root config (``mask_rcnn_vil.py``): the same data, optimizer and 1x
schedule, with Detectron2's RetinaNet on FPN levels P3-P7, where P3-P5 come from ViL's
scale3-scale5 and P6, P7 from its last output (C5); gradient norm clipped to 1.0.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from mvit_det import ViL, vil_preset

from .mask_rcnn_vil import dataloader, imagenet_weights, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up = L(ViL)(
    **vil_preset("S", drop_path_rate=0.1),
    window=7,
    window_mode="chunk",
    out_features=("scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
model.backbone.top_block = L(LastLevelP6P7)(
    in_channels="${..bottom_up.embed_dims[3]}",
    out_channels="${..out_channels}",
    in_feature="scale5",
)
model.smooth_l1_beta = 0.0
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

dataloader.train.mapper.use_instance_mask = False
optimizer.max_grad_norm = 1.0
train.init_checkpoint = imagenet_weights("S")
