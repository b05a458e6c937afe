"""Root config: Mask R-CNN with a ViL + FPN backbone on COCO, the published 1x recipe.

The recipe of the published ViL detectors: RGB input normalised with the ImageNet mean and std,
shortest side 800 (max 1333) with horizontal flips, batch 16, AdamW (lr 1e-4, weight decay 0.05
on every parameter) with the gradient norm of the whole model clipped to 0.5, 90k iterations
with the LR divided by 10 at 60k and 80k after a 1000-iteration linear warmup from 1%. Detection
heads are Detectron2's standard FPN Mask R-CNN heads. This file is ViL-S; the files under
``COCO/`` pick the size, its drop path rate and ImageNet weights, and the 3x schedule.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from mvit_det import ViL, vil_preset
from mvit_det.model_zoo import get_config
from mvit_det.solver import AdamWFullModelClip


def imagenet_weights(size: str) -> str:
    """
    URL of the published ImageNet classification checkpoint of a ViL size used for detection
    (ImageNet-1K for T and S, ImageNet-21K for M and B); the checkpointer and
    tools/convert_checkpoint.py read these files directly.

    Args:
        size: "T", "S", "M" or "B".
    """
    paths = {
        "T": "visionlongformer/longtiny1191_ape0_exact0_nglo1_mode1_swith075/model_best.pth",
        "S": "visionlongformer/small1281_relative/model_best.pth",
        "M": "IN22kpretrained/deepmedium_relative/model_best.pth",
        "B": "IN22kpretrained/deepbase_relative/model_best.pth",
    }
    return "https://penzhanwu2.blob.core.windows.net/imagenet/msvit/" + paths[size]


model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = L(ViL)(
    **vil_preset("S", drop_path_rate=0.2),
    window=7,
    window_mode="chunk",
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 16

optimizer = L(AdamWFullModelClip)(
    # params.model is set to the model object by the training tool. No exemptions from weight
    # decay (norms, biases and bias tables decay too), as in the published recipe.
    params=L(get_default_optimizer_params)(),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
    max_grad_norm=0.5,
)

train = get_config("common/train.py").train
train.max_iter = 90000
train.reference_world_size = 8  # 2 images per GPU
train.init_checkpoint = imagenet_weights("S")
# The global-query path of each stage's last attention block is unused (its global tokens are
# dropped at the end of the stage), so DDP must look for unused parameters.
train.ddp.find_unused_parameters = True

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[60000, 80000],
        num_updates="${train.max_iter}",
    ),
    warmup_length=1000 / train.max_iter,
    warmup_factor=0.01,
)
