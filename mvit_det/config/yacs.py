"""Detectron2 yacs-config (``get_cfg()``) support for every backbone family: ``cfg.MODEL.<NODE>``
keys and registry builders.

A family's keys are derived from its backbone's signature (``embed_dim`` -> ``EMBED_DIM``, tuples
as lists, ``norm_layer`` as ``NORM_EPS``) and its presets, so a new argument is a new key with no
second list to update. Its builders (``BackboneFamily.yacs_builders``) put the neck they name on
the backbone: ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"`` builds the MViT of
``cfg.MODEL.MVIT`` with Detectron2's FPN; ``"build_vil_fpn_backbone"`` (Mask R-CNN, P2-P6) and
``"build_retinanet_vil_fpn_backbone"`` (RetinaNet, P3-P7) build ViL ones.

:func:`install_family` adds a family's keys to Detectron2's default config and its builders to
Detectron2's backbone registry; ``import mvit_det`` does so for every family (see
:mod:`mvit_det`), so that every later ``get_cfg()``, including those of Detectron2's own tools,
can merge the shipped ``configs/yacs/*.yaml``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Dict, Iterator, Tuple, Type, Union

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.config import defaults as detectron2_defaults
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from ..modeling.backbones.registry import BackboneFamily, families, get_family
from ..modeling.fpn import NECKS

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

# Backbone arguments that are not config keys: the image channels come from the model's input
# shape, the activation is a class.
_NOT_KEYS = ("self", "in_chans", "act_layer")

FamilyRef = Union[str, BackboneFamily]


def _family(family: FamilyRef) -> BackboneFamily:
    return get_family(family) if isinstance(family, str) else family


def _configurable_params(backbone: Type[nn.Module]) -> Iterator[Tuple[str, inspect.Parameter]]:
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


def _to_yacs(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def add_backbone_config(cfg: CN, family: FamilyRef) -> CN:
    """
    Adds the ``MODEL.<yacs_node>`` keys of a family (one per argument of its backbone, its
    ``yacs_default_size`` preset applied) to a Detectron2 config, in place.

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.
        family: the family or its name.

    Returns:
        the same config.
    """
    family = _family(family)
    cfg.MODEL[family.yacs_node] = _signature_node(family.backbone)
    return apply_backbone_preset(cfg, family, family.yacs_default_size)


def apply_backbone_preset(cfg: CN, family: FamilyRef, size: str) -> CN:
    """
    Writes a named size of a family (every key of its preset) into ``cfg.MODEL.<yacs_node>``.

    Args:
        cfg: a config that went through :func:`add_backbone_config`.
        family: the family or its name.
        size: a size of the family's ``preset``.

    Returns:
        the same config.
    """
    family = _family(family)
    for name, value in family.preset(size).items():
        cfg.MODEL[family.yacs_node][name.upper()] = _to_yacs(value)
    return cfg


def backbone_kwargs_from_cfg(cfg: CN, family: FamilyRef, in_chans: int = 3) -> Dict[str, Any]:
    """
    Translates ``cfg.MODEL.<yacs_node>`` into keyword arguments of the family's backbone.

    Args:
        cfg: a config that went through :func:`add_backbone_config`.
        family: the family or its name.
        in_chans: image channels.

    Returns:
        the keyword arguments.
    """
    family = _family(family)
    node = cfg.MODEL[family.yacs_node]
    kwargs: Dict[str, Any] = {"in_chans": in_chans}
    for name, _ in _configurable_params(family.backbone):
        if name == "norm_layer":
            kwargs[name] = partial(nn.LayerNorm, eps=node.NORM_EPS)
        else:
            value = node[name.upper()]
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return kwargs


_BUILDERS: Dict[str, Callable[[CN, ShapeSpec], Backbone]] = {}


def yacs_builder(name: str) -> Callable[[CN, ShapeSpec], Backbone]:
    """
    The Detectron2 backbone builder ``name`` of a family's ``yacs_builders`` (one function per
    name): builds the family's backbone from ``cfg.MODEL.<yacs_node>`` and puts the neck the
    family names for the builder on it, with ``cfg.MODEL.FPN.OUT_CHANNELS / NORM / FUSE_TYPE``
    (``IN_FEATURES`` defaults to the neck's default).

    Args:
        name: the builder name, e.g. "build_mvit_fpn_backbone".
    """
    if name not in _BUILDERS:

        def build(cfg: CN, input_shape: ShapeSpec) -> Backbone:
            family = next((f for f in families() if name in f.yacs_builders), None)
            if family is None:
                raise KeyError(f"no registered backbone family has the builder {name!r}")
            bottom_up = family.backbone(
                **backbone_kwargs_from_cfg(cfg, family, in_chans=input_shape.channels)
            )
            return NECKS[family.yacs_builders[name]](
                bottom_up,
                in_features=cfg.MODEL.FPN.IN_FEATURES or None,
                out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                norm=cfg.MODEL.FPN.NORM,
                fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
            )

        build.__name__ = build.__qualname__ = name
        build.__doc__ = f"``cfg.MODEL.BACKBONE.NAME = {name!r}``: see :func:`yacs_builder`."
        _BUILDERS[name] = build
    return _BUILDERS[name]


def install_family(family: BackboneFamily) -> None:
    """
    Adds a family's ``MODEL.<yacs_node>`` keys to Detectron2's default config (what
    ``get_cfg()`` clones) and its builders to Detectron2's backbone registry (idempotent).

    Args:
        family: the family.
    """
    if family.yacs_node not in detectron2_defaults._C.MODEL:
        add_backbone_config(detectron2_defaults._C, family)
    for name in family.yacs_builders:
        if name not in BACKBONE_REGISTRY:
            BACKBONE_REGISTRY.register(yacs_builder(name))


# The functions of the shipped families under their own names.
build_mvit_fpn_backbone = yacs_builder("build_mvit_fpn_backbone")
build_vil_fpn_backbone = yacs_builder("build_vil_fpn_backbone")
build_retinanet_vil_fpn_backbone = yacs_builder("build_retinanet_vil_fpn_backbone")


def add_mvit_config(cfg: CN) -> CN:
    """:func:`add_backbone_config` of MViT (``cfg.MODEL.MVIT``, MViTv2-B by default)."""
    return add_backbone_config(cfg, "mvit")


def apply_mvit_preset(cfg: CN, size: str) -> CN:
    """:func:`apply_backbone_preset` of MViT ("T", "S", "B", "L" or "H")."""
    return apply_backbone_preset(cfg, "mvit", size)


def mvit_kwargs_from_cfg(cfg: CN, in_chans: int = 3) -> Dict[str, Any]:
    """:func:`backbone_kwargs_from_cfg` of MViT."""
    return backbone_kwargs_from_cfg(cfg, "mvit", in_chans)


def add_vil_config(cfg: CN) -> CN:
    """:func:`add_backbone_config` of ViL (``cfg.MODEL.VIL``, ViL-S by default)."""
    return add_backbone_config(cfg, "vil")


def apply_vil_preset(cfg: CN, size: str) -> CN:
    """:func:`apply_backbone_preset` of ViL ("T", "S", "M", "B", "MW" or "BW")."""
    return apply_backbone_preset(cfg, "vil", size)


def vil_kwargs_from_cfg(cfg: CN, in_chans: int = 3) -> Dict[str, Any]:
    """:func:`backbone_kwargs_from_cfg` of ViL."""
    return backbone_kwargs_from_cfg(cfg, "vil", in_chans)
