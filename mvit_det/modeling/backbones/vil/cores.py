"""The attention cores of ViL: the local rows of Vision Longformer attention, four ways.

Every core is a function ``core(attn, q, k, v, hw) -> out`` of the
:class:`~.attention.LongformerAttention` module, its (B, H * W, C) local queries, the
(B, G + H * W, C) keys and values of all tokens and the (H, W) of the map; it returns the
(B, H * W, C) attention outputs of the local queries (before ``proj``). All compute the same
function (docs/vil.md). :data:`VIL_CORES` names them; ``"auto"`` picks :func:`auto_core`'s
choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Tuple

import torch
import torch.nn.functional as F

from ...fused_attention import folded_attention, folded_width
from ...layers import is_tracing_or_exporting
from ..registry import AttentionCores
from .geometry import key_regions, query_chunks, region_padding, unchunk
from .recompute import chunk_attention

if TYPE_CHECKING:
    from .attention import LongformerAttention

__all__ = [
    "VIL_ATTN_IMPLS",
    "VIL_CORES",
    "auto_core",
    "dense_attention",
    "eager_attention",
    "recompute_attention",
    "resolve_vil_attn_impl",
    "sdpa_attention",
]


def _large_negative(dtype: torch.dtype) -> float:
    """A finite logit that softmax turns into an exact 0 next to any real logit of ``dtype``
    (finite, so that no 0 * inf appears in a backward pass)."""
    return -min(1e9, torch.finfo(dtype).max / 4)


def eager_attention(
    attn: "LongformerAttention",
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hw: Tuple[int, int],
) -> torch.Tensor:
    """
    The explicit core, chunk by chunk: the queries of each w x w chunk against the globals and
    the 3w x 3w region around the chunk, gathered from the zero-padded map; explicit scores plus
    bias, -inf for the padding (the reference).
    """
    c = attn.chunk_inputs(q, k, v, hw)
    w = attn.window
    q_c = query_chunks(c.q_map, w)  # (B, nh, rows, cols, w^2, d)
    k_c = key_regions(c.k_map, c.k_glob, w)  # (B, nh, rows, cols, S, d)
    v_c = key_regions(c.v_map, c.v_glob, w)
    scores = q_c @ k_c.transpose(-2, -1) + c.bias[:, None, None]
    # (rows, cols, 9w^2) keys of each region in the padding; globals never are.
    outside = region_padding(c.padding, w)
    globals_inside = outside.new_zeros(*outside.shape[:2], attn.num_global)
    outside = torch.cat([globals_inside, outside], -1)[:, :, None]  # (rows, cols, 1, S)
    scores = scores.masked_fill(outside, float("-inf"))
    out = scores.softmax(dim=-1) @ v_c  # (B, nh, rows, cols, w^2, d)
    return unchunk(out, hw)


def sdpa_attention(
    attn: "LongformerAttention",
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hw: Tuple[int, int],
) -> torch.Tensor:
    """
    The fused core: one ``scaled_dot_product_attention`` call over all chunks, without a score
    tensor.

    Keys in the padding are removed by an extra q/k column: 1 in every query, and in every key 0
    inside the map or a large negative value in the padding (set once on the padded map, before
    the regions are gathered). The relative-position bias is either the SDPA mask (one (heads,
    w^2, S) block broadcast over all chunks) or, when it needs a gradient, folded into the dot
    product: each query carries a one-hot of its position in the chunk (w^2 columns) and each
    key the bias towards every chunk position, so that ``q' . k' = scale * q . k + bias[query
    position, key]``, and the bias gradient arrives through the key gradient of the fused kernel
    (see :mod:`mvit_det.modeling.fused_attention`).
    """
    c = attn.chunk_inputs(q, k, v, hw)
    B, nh, _, _, d = c.q_map.shape
    w = attn.window
    w2 = w * w
    dtype = c.q_map.dtype
    bias = c.bias
    fold_bias = torch.is_grad_enabled() and bias.requires_grad
    folded = w2 if fold_bias else 0
    fill = folded_width(d, 1 + folded, c.q_map) - (d + 1 + folded)  # zero columns
    # Queries: [scale * q, 1, one-hot of the position in the chunk if folded, 0...].
    q_extra = torch.zeros(w2, 1 + folded + fill, dtype=dtype, device=c.q_map.device)
    q_extra[:, 0] = 1
    if fold_bias:
        q_extra[:, 1 : 1 + w2] = torch.eye(w2, dtype=dtype, device=c.q_map.device)
    q_c = query_chunks(c.q_map, w, q_extra)  # (B, nh, rows, cols, w^2, width)
    # Keys: [k, padding penalty, bias towards each position in the chunk if folded, 0...].
    penalty = torch.zeros(c.padding.shape, dtype=dtype, device=c.padding.device)
    penalty = penalty.masked_fill(c.padding, _large_negative(dtype))
    extra = None
    if fold_bias:
        extra = bias.transpose(1, 2)  # (nh, S, w^2)
        if attn.window_outside is not None:
            extra = extra.clamp_min(_large_negative(dtype))  # finite for the kernel
        extra = F.pad(extra, (0, fill))
    elif fill:
        extra = bias.new_zeros(nh, bias.shape[-1], fill)
    k_c = key_regions(c.k_map, c.k_glob, w, d + 1, penalty, extra)
    width = k_c.shape[-1]  # (B, nh, rows, cols, S, width)
    v_c = key_regions(c.v_map, c.v_glob, w, width)
    rows, cols, S = k_c.shape[2:5]
    # Chunks take the place of SDPA's heads dimension: (B * nh, rows * cols, tokens, width).
    # Every size is explicit (no -1), so that an empty batch (B = 0) reshapes too.
    q_shape = (B * nh, rows * cols, w2, width)
    kv_shape = (B * nh, rows * cols, S, width)
    mask = None
    if not fold_bias:  # (B * nh, 1, w^2, S): one bias block per head, for all chunks
        mask = bias[None].expand(B, -1, -1, -1).reshape(B * nh, 1, w2, S)
    out = folded_attention(
        q_c.view(q_shape), k_c.view(kv_shape), v_c.view(kv_shape), d, attn_mask=mask
    )
    return unchunk(out.view(B, nh, rows, cols, w2, d), hw)


def recompute_attention(
    attn: "LongformerAttention",
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hw: Tuple[int, int],
) -> torch.Tensor:
    """
    The recomputing core: the explicit computation as one differentiable operator that keeps only
    q, k, v and the bias parameters for the backward pass and recomputes the chunk neighbourhoods
    block by block there (:mod:`.recompute`); no (tokens x 9w^2) tensor exists at any time.
    """
    to_global = attn.g2l_relative_position_bias[1] if attn.num_global else None
    return chunk_attention(
        q, k, v, attn.local_relative_position_bias_table, to_global, attn.bias_index,
        attn.window_outside, hw, attn.num_heads, attn.scale,
    )  # fmt: skip


def dense_attention(
    attn: "LongformerAttention",
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hw: Tuple[int, int],
) -> torch.Tensor:
    """
    The dense core: one attention of all local queries over all tokens with an (HW, N) mask,
    O(N^2); for small maps and comparisons.
    """
    B, L, C = q.shape
    H, W = hw
    G, nh, d, w = attn.num_global, attn.num_heads, attn.head_dim, attn.window
    dev = q.device
    r = torch.arange(H, device=dev).repeat_interleave(W)  # (HW,)
    c = torch.arange(W, device=dev).repeat(H)
    dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]  # (HW, HW)
    if attn.window_mode == "exact":
        allowed = (dr.abs() <= w) & (dc.abs() <= w)
    else:
        allowed = ((r[:, None] // w - r[None, :] // w).abs() <= 1) & (
            (c[:, None] // w - c[None, :] // w).abs() <= 1
        )
    index = (dr.clamp(-2 * w + 1, 2 * w - 1) + 2 * w - 1) * (4 * w - 1) + (
        dc.clamp(-2 * w + 1, 2 * w - 1) + 2 * w - 1
    )
    table = attn.local_relative_position_bias_table.to(q.dtype)
    mask = table[index].permute(2, 0, 1).masked_fill(~allowed, float("-inf"))  # (nh, L, L)
    if G:
        to_global = attn.g2l_relative_position_bias[1].to(q.dtype)[:, None, :]
        mask = torch.cat([to_global.expand(-1, L, -1), mask], dim=-1)  # (nh, L, N)
    N = k.shape[1]  # explicit token counts (no -1): an empty batch reshapes too
    out = F.scaled_dot_product_attention(
        q.view(B, L, nh, d).transpose(1, 2),
        k.reshape(B, N, nh, d).transpose(1, 2),
        v.reshape(B, N, nh, d).transpose(1, 2),
        attn_mask=mask[None],
        scale=attn.scale,
    )  # (B, nh, L, d)
    return out.transpose(1, 2).reshape(B, L, C)


def auto_core(bias_needs_grad: bool, on_cpu: bool) -> str:
    """
    The rule for ``attn_impl="auto"``: "recompute" for a backward through the bias tables on the
    CPU (in fp32 measured faster than the others there, with less than half their memory:
    docs/benchmarks.md), "sdpa" otherwise. Under tracing, export and scripting, which cannot
    record the operators of "recompute", it picks "eager" instead of "recompute".

    Args:
        bias_needs_grad: whether the relative-position bias gets a gradient in this call
            (training with learned tables).
        on_cpu: whether the tensors are on the CPU.
    """
    if bias_needs_grad and on_cpu:
        return "eager" if is_tracing_or_exporting() else "recompute"
    return "sdpa"


def auto_cases(on_cpu: bool) -> Dict[str, str]:
    """What :func:`auto_core` picks for training (bias gradients) and for inference."""
    return {"training": auto_core(True, on_cpu), "inference": auto_core(False, on_cpu)}


VIL_CORES = AttentionCores(
    cores={
        "eager": eager_attention,
        "sdpa": sdpa_attention,
        "recompute": recompute_attention,
        "dense": dense_attention,
    },
    auto=auto_core,
    auto_cases=auto_cases,
)
VIL_ATTN_IMPLS = VIL_CORES.names()


def resolve_vil_attn_impl(attn_impl: str, bias_needs_grad: bool, on_cpu: bool) -> str:
    """
    The core that ``attn_impl`` stands for.

    Args:
        attn_impl: a name of :data:`VIL_CORES`, or "auto".
        bias_needs_grad, on_cpu: see :func:`auto_core`.

    Returns:
        the name of a core of :data:`VIL_CORES`.
    """
    return VIL_CORES.resolve(attn_impl, bias_needs_grad, on_cpu)
