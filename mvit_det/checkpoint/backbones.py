"""Which backbone a model has (MViT or ViL), and the weight mapping for it."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..modeling.backbone import MViT, ViL
from .mapping import LoadReport, adapt_state_dict
from .vil import adapt_vil_state_dict

__all__ = ["adapt_backbone_state_dict", "find_backbone"]


def find_backbone(
    model: nn.Module, backbone_type: Union[type, Tuple[type, ...]] = (MViT, ViL)
) -> Optional[Tuple[str, nn.Module]]:
    """
    Finds the MViT or ViL backbone inside a model.

    Args:
        model: a detector, an FPN or a backbone.
        backbone_type: the backbone class(es) to look for.

    Returns:
        (prefix of its parameter names, e.g. "backbone.bottom_up.", the module), or None when the
        model has none.

    Raises:
        ValueError: the model has more than one such backbone.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, backbone_type)]
    if len(found) > 1:
        names = ", ".join(f"{name!r} ({type(m).__name__})" for name, m in found)
        raise ValueError(f"the model has several backbones ({names}); load each separately")
    if not found:
        return None
    name, module = found[0]
    return (f"{name}." if name else ""), module


def adapt_backbone_state_dict(
    state: Mapping[str, torch.Tensor],
    backbone: nn.Module,
    prefix: str,
    source: str = "checkpoint",
    target: str = "",
    vil_bias_table: str = "centre",
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """
    Maps checkpoint weights onto a model's MViT or ViL backbone (see
    :func:`~mvit_det.checkpoint.mapping.adapt_state_dict` and
    :func:`~mvit_det.checkpoint.vil.adapt_vil_state_dict`).

    Args:
        state: checkpoint weights.
        backbone: the model's backbone module.
        prefix: its name prefix in the model.
        source: description of the checkpoint.
        target: description of the backbone; default: its class and number of blocks.
        vil_bias_table: for ViL, how full-attention bias tables of another size are converted.

    Returns:
        the weights to load into the model, and the report.
    """
    target = target or f"{type(backbone).__name__} with {backbone.num_layers} blocks"
    if isinstance(backbone, ViL):
        return adapt_vil_state_dict(
            state, backbone.state_dict(), prefix, source, target, bias_table=vil_bias_table
        )
    return adapt_state_dict(state, backbone.state_dict(), prefix, source=source, target=target)
