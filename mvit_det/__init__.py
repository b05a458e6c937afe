"""mvit_det: MViTv2 with Hybrid Window Attention as a Detectron2 backbone."""

from .config import (
    add_mvit_config,
    apply_mvit_preset,
    build_mvit_fpn_backbone,
    mvit_kwargs_from_cfg,
)
from .modeling import MVIT_PRESETS, MViT, build_mvit_fpn, mvit_preset

__version__ = "0.1.0"

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "add_mvit_config",
    "apply_mvit_preset",
    "build_mvit_fpn",
    "build_mvit_fpn_backbone",
    "mvit_kwargs_from_cfg",
    "mvit_preset",
]
