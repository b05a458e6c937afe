"""RetinaNet (P3-P7), MViTv2-S (ImageNet-1K init), LSJ 1024, 3x schedule (36 epochs)."""

from mvit_det import mvit_preset

from .common.retinanet_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("S"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("S_in1k")
