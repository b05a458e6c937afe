"""Fused attention with extra logit terms folded into q and k, shared by the backbone families.

Attention logits of the form ``scale * q . k + sum_j a_j(query) * b_j(key)`` (relative-position
terms, biases, masks) are computed by ``scaled_dot_product_attention`` without building the
(queries x keys) logits: each query is extended by its columns ``a_j`` (and carries the scale),
each key by its columns ``b_j``, so that ``q' . k'`` is the whole logit. The fused (flash)
kernels need one width for q, k and v: the extended width is rounded up to the multiple that
the device's kernels want, q'/k' are zero-filled to it, v is zero-padded to it, and the output
is cropped back to v's width. Each family builds its extended q'/k' its own way (MViT by
concatenation, ViL inside its gathered key regions); the width and the call are this module's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .layers import ceil_div, zero_pad_end

__all__ = ["folded_attention", "folded_width", "kernel_width_multiple"]


def kernel_width_multiple(x: torch.Tensor) -> int:
    """
    The multiple of which the fused attention kernels of ``x``'s device want the feature width:
    8 on CUDA (its flash and memory-efficient kernels), 1 (any width) on the CPU.
    """
    return 8 if x.is_cuda else 1


def folded_width(head_dim: int, extra: int, x: torch.Tensor) -> int:
    """
    The width of the extended q'/k' (and of the padded v).

    Args:
        head_dim: width of q, k and v.
        extra: number of folded columns.
        x: a tensor on the device of the attention (for :func:`kernel_width_multiple`).

    Returns:
        ``head_dim + extra`` rounded up to the kernels' multiple.
    """
    multiple = kernel_width_multiple(x)
    return ceil_div(head_dim + extra, multiple) * multiple


def folded_attention(
    q_ext: torch.Tensor,
    k_ext: torch.Tensor,
    v: torch.Tensor,
    head_dim: int,
    attn_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    ``softmax(q' k'^T + attn_mask) v`` with the fused kernel.

    Args:
        q_ext: (..., queries, width) extended queries, scale included.
        k_ext: (..., keys, width) extended keys.
        v: (..., keys, head_dim) values, or values already zero-padded to ``width``.
        head_dim: the width of the result (v's width before any padding).
        attn_mask: an additive mask broadcastable to (..., queries, keys), or None.

    Returns:
        (..., queries, head_dim) outputs.
    """
    width = q_ext.shape[-1]
    if v.shape[-1] != width:
        v = zero_pad_end(v, -1, width - v.shape[-1])
    out = F.scaled_dot_product_attention(q_ext, k_ext, v, attn_mask=attn_mask, scale=1.0)
    return out[..., :head_dim]
