"""Models of mvit_det: the backbone families (:mod:`.backbones`), the layers they share and the
FPN that puts a detector's neck on any of them."""

from .backbones import (
    MVIT_PRESETS,
    VIL_PRESETS,
    BackboneFamily,
    MViT,
    ViL,
    families,
    family_of,
    find_backbone,
    get_family,
    mvit_preset,
    register_family,
    vil_preset,
)
from .fpn import build_backbone_fpn, build_mvit_fpn, build_retinanet_fpn
from .layers import Mlp

__all__ = [
    "MVIT_PRESETS",
    "VIL_PRESETS",
    "BackboneFamily",
    "MViT",
    "Mlp",
    "ViL",
    "build_backbone_fpn",
    "build_mvit_fpn",
    "build_retinanet_fpn",
    "families",
    "family_of",
    "find_backbone",
    "get_family",
    "mvit_preset",
    "register_family",
    "vil_preset",
]
