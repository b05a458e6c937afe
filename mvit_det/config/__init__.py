"""Config helpers for yacs-config (``get_cfg()``) users: the keys and builders of every backbone
family (installed into Detectron2 by ``import mvit_det``)."""

from .yacs import (
    add_backbone_config,
    add_mvit_config,
    add_vil_config,
    apply_backbone_preset,
    apply_mvit_preset,
    apply_vil_preset,
    backbone_kwargs_from_cfg,
    build_mvit_fpn_backbone,
    build_retinanet_vil_fpn_backbone,
    build_vil_fpn_backbone,
    install_family,
    mvit_kwargs_from_cfg,
    vil_kwargs_from_cfg,
    yacs_builder,
)

__all__ = [
    "add_backbone_config",
    "add_mvit_config",
    "add_vil_config",
    "apply_backbone_preset",
    "apply_mvit_preset",
    "apply_vil_preset",
    "backbone_kwargs_from_cfg",
    "build_mvit_fpn_backbone",
    "build_retinanet_vil_fpn_backbone",
    "build_vil_fpn_backbone",
    "install_family",
    "mvit_kwargs_from_cfg",
    "vil_kwargs_from_cfg",
    "yacs_builder",
]
