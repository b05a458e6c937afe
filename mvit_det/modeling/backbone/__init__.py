"""The MViTv2 and ViL backbones."""

from .attention import MultiScaleAttention
from .fpn import build_mvit_fpn
from .mvit import BlockSpec, MViT, MultiScaleBlock, mvit_block_layout
from .presets import MVIT_PRESETS, VIL_PRESETS, mvit_preset, vil_preset
from .vil import ViL
from .vil_attention import LongformerAttention

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "build_mvit_fpn",
    "BlockSpec",
    "mvit_block_layout",
    "mvit_preset",
    "VIL_PRESETS",
    "ViL",
    "LongformerAttention",
    "vil_preset",
]
