"""RetinaNet (P3-P7), MViTv2-T (ImageNet-1K init), LSJ 1024, 3x schedule (36 epochs)."""

from mvit_det import mvit_preset

from .common.retinanet_mvitv2 import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.update(mvit_preset("T"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("T_in1k")
