"""The ViL family: the Multi-Scale Vision Longformer (docs/vil.md).

``model`` (the backbone and its blocks), ``attention`` and ``cores`` (Vision Longformer attention
and its explicit, fused and dense cores), ``geometry`` (bias indexes, chunks and key regions),
``checks`` (argument validation), ``presets`` (sizes T-BW), ``weights`` (published
classification and detection checkpoints). Importing it registers the family.
"""

from typing import Tuple

import torch.nn as nn

from ..registry import BackboneFamily, WeightOption, register_family
from .attention import LongformerAttention
from .checks import WINDOW_MODES, check_vil_args
from .cores import VIL_ATTN_IMPLS, VIL_CORES, resolve_vil_attn_impl
from .model import ViL, ViLAttentionBlock, ViLMlpBlock, ViLPatchEmbed
from .presets import VIL_PRESETS, vil_preset
from .weights import (
    BIAS_TABLE_CONVERSIONS,
    VIL_PRETRAINED,
    adapt_vil_state_dict,
    convert_bias_table,
    describe_vil,
)

__all__ = [
    "BIAS_TABLE_CONVERSIONS",
    "FAMILY",
    "VIL_ATTN_IMPLS",
    "VIL_CORES",
    "VIL_PRESETS",
    "VIL_PRETRAINED",
    "WINDOW_MODES",
    "LongformerAttention",
    "ViL",
    "ViLAttentionBlock",
    "ViLMlpBlock",
    "ViLPatchEmbed",
    "adapt_vil_state_dict",
    "check_vil_args",
    "convert_bias_table",
    "describe_vil",
    "resolve_vil_attn_impl",
    "vil_preset",
]


def attention_bytes(
    backbone: nn.Module, core: str, image_hw: Tuple[int, int], batch: int, element_size: int
) -> int:
    """
    Bytes of the largest (local queries x tokens) tensor of the dense core on an image (0 for
    the chunked cores, whose tensors are of the chunks' size).

    Args:
        backbone: a :class:`ViL`.
        core: the attention core.
        image_hw: (H, W) of the input.
        batch: images per call.
        element_size: bytes per element.
    """
    if core != "dense":
        return 0
    (h, w), stride, largest = image_hw, 1, 0
    for stage, globals_ in zip(backbone.stages(), backbone.num_global_tokens):
        stride *= stage[0].patch_size
        local = -(-h // stride) * -(-w // stride)
        heads = stage[1].attn.num_heads
        largest = max(largest, batch * heads * local * (local + globals_) * element_size)
    return largest


FAMILY = register_family(
    BackboneFamily(
        name="vil",
        title="ViL",
        backbone=ViL,
        presets=VIL_PRESETS,
        preset=vil_preset,
        size_names=tuple(f"vil_{size.lower()}" for size in VIL_PRESETS),
        check_args=check_vil_args,
        attention=VIL_CORES,
        adapt_weights=adapt_vil_state_dict,
        yacs_node="VIL",
        yacs_default_size="S",
        yacs_builders={
            "build_vil_fpn_backbone": "fpn",
            "build_retinanet_vil_fpn_backbone": "retinanet_fpn",
        },
        weight_options=(
            WeightOption(
                flag="--bias-table",
                name="bias_table",
                default="centre",
                choices=BIAS_TABLE_CONVERSIONS,
                help="ViL classification weights: how a full-attention relative-position table "
                "of another size becomes the model's window table; 'centre' keeps the function "
                "exactly, 'bilinear' resizes the table as the published detection fine-tuning "
                "did",
            ),
        ),
        attention_bytes=attention_bytes,
        pretrained=VIL_PRETRAINED,
    )
)
