"""mvit_det: MViTv2 with Hybrid Window Attention, and ViL, as Detectron2 backbones.

Importing mvit_det changes three globals of Detectron2 and fvcore, all in :func:`install` below
(and nowhere else), so that Detectron2's own tools and configs can use its models:

- Detectron2's default yacs config gets the keys of every backbone family (``MODEL.MVIT``,
  ``MODEL.VIL``, ...) and its backbone registry the families' builders
  (``build_mvit_fpn_backbone``, ...), also for families registered later;
- Detectron2's dataset catalog gets the synthetic ``shapes_train`` / ``shapes_val`` datasets;
- fvcore's default FLOP handles get a count of ``aten::scaled_dot_product_attention`` (see
  :mod:`mvit_det.analysis`), so that every ``FlopCountAnalysis`` counts the fused attention.
"""

from .analysis import register_fvcore_handles
from .checkpoint import BackboneCheckpointer, MViTCheckpointer
from .config import (
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
)
from .data import register_shapes_dataset
from .modeling import (
    MVIT_PRESETS,
    VIL_PRESETS,
    BackboneFamily,
    MViT,
    ViL,
    build_backbone_fpn,
    build_mvit_fpn,
    build_retinanet_fpn,
    families,
    get_family,
    mvit_preset,
    register_family,
    vil_preset,
)
from .modeling.backbones import on_register

__version__ = "0.1.0"


_installed = False


def install() -> None:
    """The changes to Detectron2's and fvcore's globals that ``import mvit_det`` makes (see the
    module's docstring); later calls do nothing."""
    global _installed
    if _installed:
        return
    on_register(install_family)
    register_shapes_dataset()
    register_fvcore_handles()
    _installed = True


install()

# The Python predictor (mvit_det.predictor) is imported on first use: it pulls in the tools'
# config loading, which plain backbone users do not need.
_LAZY = {"Predictor": "predictor", "to_coco": "predictor"}


def __getattr__(name: str) -> object:
    """``mvit_det.Predictor`` and ``mvit_det.to_coco``, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "build_retinanet_vil_fpn_backbone",
    "build_vil_fpn_backbone",
    "vil_kwargs_from_cfg",
    "vil_preset",
    "BackboneCheckpointer",
    "BackboneFamily",
    "add_backbone_config",
    "apply_backbone_preset",
    "backbone_kwargs_from_cfg",
    "build_backbone_fpn",
    "build_retinanet_fpn",
    "families",
    "get_family",
    "install",
    "register_family",
    "Predictor",
    "to_coco",
]
