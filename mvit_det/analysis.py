"""FLOP, parameter and activation counts with fvcore, including the fused attention op.

fvcore (and Detectron2's ``FlopCountAnalysis``, which ``tools/analyze_model.py`` uses) has no
count for ``aten::scaled_dot_product_attention`` and leaves it out of the total with an
"unsupported operator" warning. :func:`register_fvcore_handles` adds one to fvcore's default
handles; ``import mvit_det`` calls it (:func:`mvit_det.install`), so every FlopCountAnalysis
created afterwards counts the fused attention.

The count is the two products of attention, ``q k^T`` and ``attn v``, in multiply-adds (fvcore's
convention). The fused cores fold extra logit terms (relative positions, biases) into q and k as
extra columns and zero-pad q, k and v to a common width (:mod:`mvit_det.modeling.fused_attention`);
those columns implement additions, which fvcore does not count in the explicit cores either, so
the handle counts both products at the real head dim (v's width before the padding), whatever the
padding. Fused and explicit cores then give the same total (``tests/test_flop_count.py`` pins it).

FLOPs are counted on a traced graph; a traced MViT pads queries to whole windows (the published
formulation, needed for a graph that serves every input size), so the count includes the work on
padded window queries that an eager forward skips.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any, Dict, List

import torch
from fvcore.nn.jit_handles import get_shape

__all__ = ["register_fvcore_handles", "sdpa_flop_jit", "flop_count_by_operator"]

SDPA_OP = "aten::scaled_dot_product_attention"
_ZEROS_OPS = ("aten::zeros", "aten::new_zeros", "aten::zeros_like")
# The module, not the function of the same name that fvcore.nn exports.
_FVCORE_FLOP_COUNT = importlib.import_module("fvcore.nn.flop_count")


def _unpadded_width(value: torch._C.Value) -> int:
    """
    The last dim of a traced tensor before zero padding along it, or its last dim if unpadded.

    Recognises ``cat([x, zeros], -1)`` (how a traced fused core pads v) and ``constant_pad_nd``.
    """
    node = value.node()
    width = get_shape(value)[-1]
    if node.kind() == "aten::constant_pad_nd":
        return get_shape(next(node.inputs()))[-1]
    if node.kind() == "aten::cat":
        parts = list(next(node.inputs()).node().inputs())
        if len(parts) == 2 and parts[1].node().kind() in _ZEROS_OPS:
            real = get_shape(parts[0])
            if len(real) == len(get_shape(value)) and real[-1] < width:
                return real[-1]
    return width


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """
    fvcore handle of ``aten::scaled_dot_product_attention``: ``q k^T`` and ``attn v``.

    Args:
        inputs: the op's traced inputs (q, k, v, ...), each (..., tokens, width).
        outputs: the op's traced outputs (unused).

    Returns:
        a Counter with the multiply-adds under "scaled_dot_product_attention". When v is
        zero-padded (a fused core with folded terms), both products count at v's unpadded width:
        the padding and the folded columns add, they do not multiply features.
    """
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    v_width = get_shape(inputs[2])[-1]
    real_width = _unpadded_width(inputs[2])
    qk_width = real_width if real_width < v_width else q[-1]
    batch = 1
    for size in q[:-2]:
        batch *= size
    return Counter(
        {"scaled_dot_product_attention": batch * q[-2] * k[-2] * (qk_width + real_width)}
    )


def register_fvcore_handles() -> None:
    """Adds :func:`sdpa_flop_jit` to fvcore's default FLOP handles (idempotent)."""
    _FVCORE_FLOP_COUNT._DEFAULT_SUPPORTED_OPS[SDPA_OP] = sdpa_flop_jit


def flop_count_by_operator(model: torch.nn.Module, inputs: Any) -> Dict[str, float]:
    """
    GFLOPs (multiply-adds) per operator of one forward, with Detectron2's FlopCountAnalysis (the
    one ``tools/analyze_model.py`` uses; detector inputs such as ``[{"image": ...}]`` work).

    Args:
        model: a module, in the mode to analyse (``eval()`` for inference).
        inputs: its forward arguments (a tuple) or one argument.

    Returns:
        operator -> GFLOPs, and "total".
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    register_fvcore_handles()
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_op = {op: count / 1e9 for op, count in analysis.by_operator().items()}
        by_op["total"] = analysis.total() / 1e9
    return by_op
