"""RetinaNet, MViTv2-B with a simple feature pyramid (ViTDet-style), LSJ 1024, 3x schedule.

Instead of an FPN over three stages, Detectron2's SimpleFeaturePyramid builds P3-P5 from the
last stage alone (scale5, stride 32: upsampled x4 and x2 by transposed convs, and as is, each
followed by LayerNorm'd 1x1 and 3x3 convs), and P6-P7 by stride-2 convs on P5. Images are padded
to 1024x1024 squares, as in ViTDet.
"""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from mvit_det import mvit_preset

from .common.retinanet_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone = L(SimpleFeaturePyramid)(
    net=model.backbone.bottom_up,
    in_feature="scale5",
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0),
    top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5"),
    norm="LN",
    square_pad=1024,
)
model.backbone.net.update(mvit_preset("B"), out_features=("scale5",))
# The MViT is model.backbone.net here: layer decay follows it.
optimizer.params.lr_factor_func.update(
    depth="${model.backbone.net.depth}",
    last_block_indexes="${model.backbone.net.last_block_indexes}",
    prefix="backbone.net.",
)
train.init_checkpoint = IMAGENET_WEIGHTS.format("B_in1k")
