"""Config helpers for yacs-config (``get_cfg()``) users; importing it registers the builders."""

from .yacs import add_mvit_config, apply_mvit_preset, build_mvit_fpn_backbone, mvit_kwargs_from_cfg

__all__ = [
    "add_mvit_config",
    "apply_mvit_preset",
    "build_mvit_fpn_backbone",
    "mvit_kwargs_from_cfg",
]
