"""3x schedule: 36 COCO epochs at 64 images per iteration, 250-iteration warmup, step decay."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from .train import train

# 67,500 iterations x 64 images = 36.5 epochs of COCO train2017 (118,287 images).
train.max_iter = 67500

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[52500, 62500],
        num_updates="${train.max_iter}",
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
