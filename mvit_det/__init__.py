"""mvit_det: MViTv2 with Hybrid Window Attention, and ViL, as Detectron2 backbones.

Importing it registers, for Detectron2's own tools: the yacs backbone builder
(``build_mvit_fpn_backbone``), the synthetic ``shapes_train`` / ``shapes_val`` datasets and the
fvcore FLOP count of the fused attention op.
"""

from . import data  # noqa: F401  (registers the shapes datasets)
from .analysis import register_fvcore_handles
from .checkpoint import MViTCheckpointer
from .config import (
    add_mvit_config,
    add_vil_config,
    apply_mvit_preset,
    apply_vil_preset,
    build_mvit_fpn_backbone,
    mvit_kwargs_from_cfg,
    vil_kwargs_from_cfg,
)
from .modeling import MVIT_PRESETS, VIL_PRESETS, MViT, ViL, build_mvit_fpn, mvit_preset, vil_preset

__version__ = "0.1.0"

register_fvcore_handles()

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "MViTCheckpointer",
    "add_mvit_config",
    "apply_mvit_preset",
    "build_mvit_fpn",
    "build_mvit_fpn_backbone",
    "mvit_kwargs_from_cfg",
    "mvit_preset",
    "VIL_PRESETS",
    "ViL",
    "add_vil_config",
    "apply_vil_preset",
    "vil_kwargs_from_cfg",
    "vil_preset",
]
