"""Detectron2 yacs-config (``get_cfg()``) support: ``cfg.MODEL.MVIT`` keys and registry builders.

The keys are derived from :class:`MViT`'s signature (``embed_dim`` -> ``EMBED_DIM``, tuples as
lists, ``norm_layer`` as ``NORM_EPS``) and the presets, so a new MViT argument is a new key with no
second list to update. ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"`` then builds the
MViT with Detectron2's FPN.

Importing this module (``import mvit_det`` does) also adds the keys to Detectron2's default config,
so every later ``get_cfg()``, including those of Detectron2's own tools, can merge the shipped
``configs/yacs/*.yaml``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Dict, Iterator, Tuple

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.config import defaults as detectron2_defaults
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN

from ..modeling.backbone import MViT, build_mvit_fpn, mvit_preset

__all__ = [
    "add_mvit_config",
    "apply_mvit_preset",
    "build_mvit_fpn_backbone",
    "mvit_kwargs_from_cfg",
    "register_mvit_defaults",
]

# MViT arguments that are not config keys: the image channels come from the model's input shape,
# the activation is a class.
_NOT_KEYS = ("self", "in_chans", "act_layer")
_DEFAULT_SIZE = "B"


def _configurable_params() -> Iterator[Tuple[str, inspect.Parameter]]:
    for name, param in inspect.signature(MViT.__init__).parameters.items():
        if name not in _NOT_KEYS:
            yield name, param


def _to_yacs(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def add_mvit_config(cfg: CN) -> CN:
    """
    Adds the ``MODEL.MVIT`` keys (one per :class:`MViT` argument, MViTv2-B by default) to a
    Detectron2 config, in place.

    Use with ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"``.

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.

    Returns:
        the same config.
    """
    node = CN()
    for name, param in _configurable_params():
        if name == "norm_layer":
            node.NORM_EPS = param.default.keywords["eps"]
        else:
            node[name.upper()] = _to_yacs(param.default)
    node.set_new_allowed(False)
    cfg.MODEL.MVIT = node
    return apply_mvit_preset(cfg, _DEFAULT_SIZE)


def apply_mvit_preset(cfg: CN, size: str) -> CN:
    """
    Writes a named MViTv2 size (every key of :func:`mvit_preset`) into ``cfg.MODEL.MVIT``.

    Args:
        cfg: a config that went through :func:`add_mvit_config`.
        size: "T", "S", "B", "L" or "H".

    Returns:
        the same config.
    """
    for name, value in mvit_preset(size).items():
        cfg.MODEL.MVIT[name.upper()] = _to_yacs(value)
    return cfg


def mvit_kwargs_from_cfg(cfg: CN, in_chans: int = 3) -> Dict[str, Any]:
    """
    Translates ``cfg.MODEL.MVIT`` into :class:`MViT` keyword arguments.

    Args:
        cfg: a config that went through :func:`add_mvit_config`.
        in_chans: image channels.

    Returns:
        the keyword arguments.
    """
    node = cfg.MODEL.MVIT
    kwargs: Dict[str, Any] = {"in_chans": in_chans}
    for name, _ in _configurable_params():
        if name == "norm_layer":
            kwargs[name] = partial(nn.LayerNorm, eps=node.NORM_EPS)
        else:
            value = node[name.upper()]
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return kwargs


@BACKBONE_REGISTRY.register()
def build_mvit_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """
    ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"``: MViT (``cfg.MODEL.MVIT``) with FPN
    (``cfg.MODEL.FPN.OUT_CHANNELS / NORM / FUSE_TYPE``; ``IN_FEATURES`` defaults to all MViT
    outputs).
    """
    bottom_up = MViT(**mvit_kwargs_from_cfg(cfg, in_chans=input_shape.channels))
    return build_mvit_fpn(
        bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES or None,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def register_mvit_defaults() -> None:
    """Adds the ``MODEL.MVIT`` keys to Detectron2's default config (what ``get_cfg()`` clones)."""
    if "MVIT" not in detectron2_defaults._C.MODEL:
        add_mvit_config(detectron2_defaults._C)


register_mvit_defaults()
