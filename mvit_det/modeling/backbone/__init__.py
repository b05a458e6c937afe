"""The MViTv2 backbone."""

from .attention import MultiScaleAttention
from .fpn import build_mvit_fpn
from .mvit import BlockSpec, MViT, MultiScaleBlock, mvit_block_layout
from .presets import MVIT_PRESETS, mvit_preset

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "build_mvit_fpn",
    "BlockSpec",
    "mvit_block_layout",
    "mvit_preset",
]
