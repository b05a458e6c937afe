"""Config helpers for yacs-config (``get_cfg()``) users; importing it registers the builders."""

from .yacs import (
    add_mvit_config,
    add_vil_config,
    apply_mvit_preset,
    apply_vil_preset,
    build_mvit_fpn_backbone,
    build_retinanet_vil_fpn_backbone,
    build_vil_fpn_backbone,
    mvit_kwargs_from_cfg,
    vil_kwargs_from_cfg,
)

__all__ = [
    "add_mvit_config",
    "add_vil_config",
    "apply_mvit_preset",
    "apply_vil_preset",
    "build_mvit_fpn_backbone",
    "build_retinanet_vil_fpn_backbone",
    "build_vil_fpn_backbone",
    "mvit_kwargs_from_cfg",
    "vil_kwargs_from_cfg",
]
