"""Detectron2 yacs-config (``get_cfg()``) support: ``cfg.MODEL.MVIT`` / ``cfg.MODEL.VIL`` keys and
registry builders.

The keys are derived from the backbone's signature (``embed_dim`` -> ``EMBED_DIM``, tuples as
lists, ``norm_layer`` as ``NORM_EPS``) and the presets, so a new argument is a new key with no
second list to update. ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"`` then builds the
MViT with Detectron2's FPN; ``"build_vil_fpn_backbone"`` (Mask R-CNN, P2-P6) and
``"build_retinanet_vil_fpn_backbone"`` (RetinaNet, P3-P7) build ViL ones.

Importing this module (``import mvit_det`` does) also adds the keys to Detectron2's default config,
so every later ``get_cfg()``, including those of Detectron2's own tools, can merge the shipped
``configs/yacs/*.yaml``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Dict, Iterator, Tuple, Type

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.config import defaults as detectron2_defaults
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ..modeling.backbone import MViT, ViL, build_mvit_fpn, mvit_preset, vil_preset

__all__ = [
    "add_mvit_config",
    "add_vil_config",
    "apply_mvit_preset",
    "apply_vil_preset",
    "build_mvit_fpn_backbone",
    "build_retinanet_vil_fpn_backbone",
    "build_vil_fpn_backbone",
    "mvit_kwargs_from_cfg",
    "register_mvit_defaults",
    "vil_kwargs_from_cfg",
]

# Backbone arguments that are not config keys: the image channels come from the model's input
# shape, the activation is a class.
_NOT_KEYS = ("self", "in_chans", "act_layer")
_DEFAULT_SIZE = "B"
_VIL_DEFAULT_SIZE = "S"


def _configurable_params(
    backbone: Type[nn.Module] = MViT,
) -> Iterator[Tuple[str, inspect.Parameter]]:
    for name, param in inspect.signature(backbone.__init__).parameters.items():
        if name not in _NOT_KEYS:
            yield name, param


def _signature_node(backbone: Type[nn.Module]) -> CN:
    """A config node with one key per argument of ``backbone`` and its default value."""
    node = CN()
    for name, param in _configurable_params(backbone):
        if name == "norm_layer":
            node.NORM_EPS = param.default.keywords["eps"]
        else:
            node[name.upper()] = _to_yacs(param.default)
    node.set_new_allowed(False)
    return node


def _kwargs_from_node(backbone: Type[nn.Module], node: CN, in_chans: int) -> Dict[str, Any]:
    """The keyword arguments of ``backbone`` that a node of :func:`_signature_node` holds."""
    kwargs: Dict[str, Any] = {"in_chans": in_chans}
    for name, _ in _configurable_params(backbone):
        if name == "norm_layer":
            kwargs[name] = partial(nn.LayerNorm, eps=node.NORM_EPS)
        else:
            value = node[name.upper()]
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return kwargs


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
    cfg.MODEL.MVIT = _signature_node(MViT)
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
    return _kwargs_from_node(MViT, cfg.MODEL.MVIT, in_chans)


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


def add_vil_config(cfg: CN) -> CN:
    """
    Adds the ``MODEL.VIL`` keys (one per :class:`ViL` argument, ViL-S by default) to a
    Detectron2 config, in place.

    Use with ``cfg.MODEL.BACKBONE.NAME = "build_vil_fpn_backbone"`` (Mask R-CNN) or
    ``"build_retinanet_vil_fpn_backbone"`` (RetinaNet).

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.

    Returns:
        the same config.
    """
    cfg.MODEL.VIL = _signature_node(ViL)
    return apply_vil_preset(cfg, _VIL_DEFAULT_SIZE)


def apply_vil_preset(cfg: CN, size: str) -> CN:
    """
    Writes a named ViL size (every key of :func:`vil_preset`) into ``cfg.MODEL.VIL``.

    Args:
        cfg: a config that went through :func:`add_vil_config`.
        size: "T", "S", "M", "B", "MW" or "BW".

    Returns:
        the same config.
    """
    for name, value in vil_preset(size).items():
        cfg.MODEL.VIL[name.upper()] = _to_yacs(value)
    return cfg


def vil_kwargs_from_cfg(cfg: CN, in_chans: int = 3) -> Dict[str, Any]:
    """
    Translates ``cfg.MODEL.VIL`` into :class:`ViL` keyword arguments.

    Args:
        cfg: a config that went through :func:`add_vil_config`.
        in_chans: image channels.

    Returns:
        the keyword arguments.
    """
    return _kwargs_from_node(ViL, cfg.MODEL.VIL, in_chans)


@BACKBONE_REGISTRY.register()
def build_vil_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """
    ``cfg.MODEL.BACKBONE.NAME = "build_vil_fpn_backbone"``: ViL (``cfg.MODEL.VIL``) with FPN
    P2-P5 and P6 by max pooling P5, as for Mask R-CNN (``cfg.MODEL.FPN.OUT_CHANNELS / NORM /
    FUSE_TYPE``; ``IN_FEATURES`` defaults to all ViL outputs).
    """
    bottom_up = ViL(**vil_kwargs_from_cfg(cfg, in_chans=input_shape.channels))
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES or list(bottom_up.output_shape()),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_vil_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """
    ``cfg.MODEL.BACKBONE.NAME = "build_retinanet_vil_fpn_backbone"``: ViL with FPN P3-P5 from
    scale3-scale5 (or ``cfg.MODEL.FPN.IN_FEATURES``) and P6, P7 computed from the last ViL
    output (C5), as for RetinaNet.
    """
    bottom_up = ViL(**vil_kwargs_from_cfg(cfg, in_chans=input_shape.channels))
    in_features = cfg.MODEL.FPN.IN_FEATURES or ["scale3", "scale4", "scale5"]
    last = in_features[-1]
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(
            bottom_up.output_shape()[last].channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature=last
        ),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def register_mvit_defaults() -> None:
    """
    Adds the ``MODEL.MVIT`` and ``MODEL.VIL`` keys to Detectron2's default config (what
    ``get_cfg()`` clones).
    """
    if "MVIT" not in detectron2_defaults._C.MODEL:
        add_mvit_config(detectron2_defaults._C)
    if "VIL" not in detectron2_defaults._C.MODEL:
        add_vil_config(detectron2_defaults._C)


register_mvit_defaults()
