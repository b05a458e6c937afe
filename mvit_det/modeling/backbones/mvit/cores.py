"""The attention cores of MViT: softmax((q * scale) k^T + relative positions) v, two ways.

Every core is a function ``core(q, k, v, q_hw, tables, scale) -> out`` of (N, heads, tokens, d)
queries, keys and values (N = batch x windows), the (rows, cols) of the query grid, the
relative-position embeddings of :meth:`MultiScaleAttention._rel_pos_tables` (or None) and the
softmax scale; it returns (N, heads, queries, d). :data:`MVIT_CORES` names them; ``"auto"``
picks :func:`auto_core`'s choice.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...fused_attention import folded_attention, folded_width
from ..registry import AttentionCores
from ...layers import unflatten_dim
from .geometry import decomposed_rel_pos_terms

__all__ = [
    "ATTN_IMPLS",
    "MVIT_CORES",
    "auto_core",
    "eager_attention",
    "resolve_attn_impl",
    "scripted_core",
    "sdpa_attention",
]

Tables = Optional[Tuple[torch.Tensor, torch.Tensor]]


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hw: Tuple[int, int],
    tables: Tables,
    scale: float,
) -> torch.Tensor:
    """The explicit core: materialises every (queries x keys) attention matrix."""
    attn = (q * scale) @ k.transpose(-2, -1)  # (N, nh, Nq, Nk)
    if tables is not None:
        rel_h, rel_w = decomposed_rel_pos_terms(q, tables[0], tables[1], q_hw)
        k_hw = (tables[0].shape[1], tables[1].shape[1])
        # (N, nh, Nq, kh, kw) + (N, nh, Nq, kh, 1) + (N, nh, Nq, 1, kw)
        attn = (
            unflatten_dim(attn, -1, [k_hw[0], k_hw[1]]) + rel_h[..., :, None] + rel_w[..., None, :]
        )
        attn = attn.flatten(-2)
    return attn.softmax(dim=-1) @ v


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hw: Tuple[int, int],
    tables: Tables,
    scale: float,
) -> torch.Tensor:
    """
    The fused core: ``scaled_dot_product_attention``, no (queries x keys) tensor.

    The relative-position terms are folded into the dot product (see
    :mod:`mvit_det.modeling.fused_attention`): each query is extended with its rel_h (k_h
    values) and rel_w (k_w values) terms and each key at (m, n) with one-hot row and column
    indicators, so ``q' . k' = scale * q . k + rel_h[m] + rel_w[n]``.
    """
    if tables is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    rel_h, rel_w = decomposed_rel_pos_terms(q, tables[0], tables[1], q_hw)
    k_h, k_w = tables[0].shape[1], tables[1].shape[1]
    d = q.shape[-1]
    extra = k_h + k_w
    pad = folded_width(d, extra, q) - d - extra
    eye_h = torch.eye(k_h, dtype=k.dtype, device=k.device)
    eye_w = torch.eye(k_w, dtype=k.dtype, device=k.device)
    # (k_h * k_w, k_h + k_w + pad): one-hot row and column of every key position
    onehot = torch.cat(
        [
            eye_h[:, None, :].expand(k_h, k_w, k_h),
            eye_w[None, :, :].expand(k_h, k_w, k_w),
            k.new_zeros(k_h, k_w, pad),
        ],
        dim=-1,
    ).flatten(0, 1)
    q_ext = torch.cat([q * scale, rel_h, rel_w, q.new_zeros(list(q.shape[:-1]) + [pad])], -1)
    k_ext = torch.cat([k, onehot.expand(list(k.shape[:-1]) + [extra + pad])], dim=-1)
    return folded_attention(q_ext, k_ext, v, d)


def auto_core() -> str:
    """
    The rule for ``attn_impl="auto"``: "sdpa", the faster and leaner core on both CUDA and CPU
    (see docs/benchmarks.md).
    """
    return "sdpa"


MVIT_CORES = AttentionCores(
    cores={"eager": eager_attention, "sdpa": sdpa_attention}, auto=auto_core
)
ATTN_IMPLS = MVIT_CORES.names()


def resolve_attn_impl(attn_impl: str) -> str:
    """
    The core that ``attn_impl`` stands for.

    Args:
        attn_impl: "eager" (:func:`eager_attention`), "sdpa" (:func:`sdpa_attention`) or "auto"
            (:func:`auto_core`).

    Returns:
        the name of a core of :data:`MVIT_CORES`.
    """
    return MVIT_CORES.resolve(attn_impl)


def scripted_core(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hw: Tuple[int, int],
    tables: Tables,
    scale: float,
) -> torch.Tensor:
    """
    The cores in TorchScript, which cannot call functions out of :data:`MVIT_CORES`: written
    out by name ("auto" as :func:`auto_core` chooses). A core added to the table is added here
    too for ``torch.jit.script`` (``tests/test_export.py`` scripts every core of the table).

    Raises:
        RuntimeError: a core that is not written out here.
    """
    if name == "auto":
        name = auto_core()
    if name == "eager":
        return eager_attention(q, k, v, q_hw, tables, scale)
    if name == "sdpa":
        return sdpa_attention(q, k, v, q_hw, tables, scale)
    raise RuntimeError("attention core " + name + " is not written out for TorchScript")
