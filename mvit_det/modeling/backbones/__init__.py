"""The backbone families (one package each) and their registry.

Importing this package registers the families shipped with mvit_det: :mod:`.mvit` and
:mod:`.vil`. A third family is a package of the same shape that calls
:func:`~.registry.register_family` (docs/architecture.md, "Adding a backbone").
"""

from .registry import (
    AttentionCores,
    BackboneFamily,
    PretrainedWeights,
    WeightOption,
    backbone_classes,
    families,
    family_of,
    find_backbone,
    get_family,
    on_register,
    register_family,
    unregister_family,
)

# Importing a family's package registers it.
from . import mvit, vil
from .mvit import MVIT_PRESETS, MViT, mvit_preset
from .vil import VIL_PRESETS, ViL, vil_preset

__all__ = [
    "MVIT_PRESETS",
    "VIL_PRESETS",
    "AttentionCores",
    "BackboneFamily",
    "MViT",
    "PretrainedWeights",
    "ViL",
    "WeightOption",
    "backbone_classes",
    "families",
    "family_of",
    "find_backbone",
    "get_family",
    "mvit",
    "mvit_preset",
    "on_register",
    "register_family",
    "unregister_family",
    "vil",
    "vil_preset",
]
