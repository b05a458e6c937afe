"""Models of mvit_det."""

from .backbone import MVIT_PRESETS, MViT, build_mvit_fpn, mvit_preset

__all__ = ["MVIT_PRESETS", "MViT", "build_mvit_fpn", "mvit_preset"]
