"""Models of mvit_det."""

from .backbone import (
    MVIT_PRESETS,
    VIL_PRESETS,
    MViT,
    ViL,
    build_mvit_fpn,
    mvit_preset,
    vil_preset,
)

__all__ = [
    "MVIT_PRESETS",
    "MViT",
    "build_mvit_fpn",
    "mvit_preset",
    "VIL_PRESETS",
    "ViL",
    "vil_preset",
]
