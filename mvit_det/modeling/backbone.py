"""The names of the former ``mvit_det.modeling.backbone`` package, for imports written against it.

The backbones now live in one package per family, :mod:`mvit_det.modeling.backbones.mvit` and
:mod:`mvit_det.modeling.backbones.vil`.
"""

from .backbones.mvit import (
    MVIT_PRESETS,
    BlockSpec,
    MViT,
    MultiScaleAttention,
    MultiScaleBlock,
    mvit_block_layout,
    mvit_preset,
)
from .backbones.vil import VIL_PRESETS, LongformerAttention, ViL, vil_preset
from .fpn import build_mvit_fpn

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
