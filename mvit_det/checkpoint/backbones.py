"""Which backbone a model has, and the weight mapping of its family."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn as nn

from ..modeling.backbones.registry import family_of, find_backbone
from .mapping import LoadReport

__all__ = ["adapt_backbone_state_dict", "find_backbone"]


def adapt_backbone_state_dict(
    state: Mapping[str, torch.Tensor],
    backbone: nn.Module,
    prefix: str,
    source: str = "checkpoint",
    target: str = "",
    **options: Any,
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """
    Maps checkpoint weights onto a model's backbone with the mapping of the backbone's family
    (``adapt_weights`` of its :class:`~mvit_det.modeling.backbones.registry.BackboneFamily`).

    Args:
        state: checkpoint weights.
        backbone: the model's backbone module (of a registered family).
        prefix: its name prefix in the model.
        source: description of the checkpoint.
        target: description of the backbone; default: its class and number of blocks.
        options: options of the families' mappings (``weight_options``, e.g. ``bias_table`` of
            ViL); those that the backbone's family does not have are ignored.

    Returns:
        the weights to load into the model, and the report.

    Raises:
        ValueError: the backbone belongs to no registered family.
    """
    family = family_of(backbone)
    if family is None:
        raise ValueError(f"{type(backbone).__name__} is not the backbone of a registered family")
    target = target or f"{type(backbone).__name__} with {backbone.num_layers} blocks"
    own = {o.name for o in family.weight_options}
    return family.adapt_weights(
        state,
        backbone.state_dict(),
        prefix,
        source=source,
        target=target,
        **{k: v for k, v in options.items() if k in own},
    )
