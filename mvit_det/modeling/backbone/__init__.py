"""The MViTv2 backbone."""

from .attention import MultiScaleAttention
from .fpn import build_mvit_fpn, build_mvit_fpn_backbone
from .mvit import MViT, MultiScaleBlock
from .presets import MVIT_PRESETS, mvit_preset

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "build_mvit_fpn",
    "build_mvit_fpn_backbone",
    "mvit_preset",
]
