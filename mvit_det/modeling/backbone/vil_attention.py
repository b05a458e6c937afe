"""Vision Longformer attention (ViL): local attention in a window or neighbourhood of chunks,
global tokens, and relative-position bias, with an explicit, a fused and a dense core.

Token layout: ``[G global tokens; H * W local tokens in raster order]``. See docs/vil.md for the
rules this module implements.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import ceil_div, is_tracing_or_exporting
from .vil_chunk_function import chunk_attention

__all__ = [
    "VIL_ATTN_IMPLS",
    "WINDOW_MODES",
    "LongformerAttention",
    "exact_window_outside",
    "relative_bias_index",
    "resolve_vil_attn_impl",
]

WINDOW_MODES = ("chunk", "exact")
VIL_ATTN_IMPLS = ("auto", "eager", "sdpa", "recompute", "dense")


def resolve_vil_attn_impl(attn_impl: str, bias_needs_grad: bool, on_cpu: bool) -> str:
    """
    Chooses the attention core of :class:`LongformerAttention`.

    Args:
        attn_impl: "eager" (explicit scores per chunk neighbourhood, the reference), "sdpa" (one
            ``scaled_dot_product_attention`` call over gathered neighbourhoods; no score tensor
            is built), "recompute" (one autograd function that keeps only q, kv and the bias
            tables and recomputes the neighbourhoods block by block in the backward pass:
            :mod:`.vil_chunk_function`), "dense" (local queries against all tokens with an
            N x N mask: O(N^2), for small maps and comparisons), or "auto".
        bias_needs_grad: whether the relative-position bias gets a gradient in this call
            (training with learned tables).
        on_cpu: whether the tensors are on the CPU.

    Returns:
        "eager", "sdpa", "recompute" or "dense". "auto" picks "recompute" for a backward through
        the bias tables on the CPU (in fp32 measured faster than the others there, with less
        than half their memory: docs/benchmarks.md) and "sdpa" otherwise. Under tracing, export and
        scripting, which cannot record the custom autograd function, it picks "eager" instead
        of "recompute".
    """
    if attn_impl != "auto":
        return attn_impl
    if bias_needs_grad and on_cpu:
        return "eager" if is_tracing_or_exporting() else "recompute"
    return "sdpa"


def _width_multiple(x: torch.Tensor) -> int:
    """The feature widths the fused attention kernels of ``x``'s device need a multiple of (8 on
    CUDA; any width on the CPU)."""
    return 8 if x.is_cuda else 1


def _large_negative(dtype: torch.dtype) -> float:
    """A finite logit that softmax turns into an exact 0 next to any real logit of ``dtype``
    (finite, so that no 0 * inf appears in a backward pass)."""
    return -min(1e9, torch.finfo(dtype).max / 4)


def relative_bias_index(window: int) -> torch.Tensor:
    """
    Index into the ``((4w - 1)**2, heads)`` bias table for the queries of a w x w chunk and the
    keys of the 3w x 3w region around it (the chunk and its 8 neighbours).

    Queries are in raster order inside the chunk; keys in raster order inside the region, which
    starts w rows above and w columns left of the chunk. The table entry of a (query, key) pair
    is ``(dr + 2w - 1) * (4w - 1) + (dc + 2w - 1)`` with (dr, dc) = query - key.

    Args:
        window: the chunk side w.

    Returns:
        (w**2, 9 * w**2) int64 index.
    """
    w = window
    q = torch.arange(w)
    k = torch.arange(3 * w) - w
    dr = (q[:, None] - k[None, :])[:, None, :, None]  # (w, 1, 3w, 1)
    dc = (q[:, None] - k[None, :])[None, :, None, :]  # (1, w, 1, 3w)
    index = (dr + 2 * w - 1) * (4 * w - 1) + (dc + 2 * w - 1)  # (w, w, 3w, 3w)
    return index.reshape(w * w, 9 * w * w)


def exact_window_outside(window: int) -> torch.Tensor:
    """
    Which (query, key) pairs of :func:`relative_bias_index` lie outside the exact sliding
    window, ``|dr| > w or |dc| > w``.

    Args:
        window: the chunk side w.

    Returns:
        (w**2, 9 * w**2) bool.
    """
    w = window
    q = torch.arange(w)
    k = torch.arange(3 * w) - w
    far = (q[:, None] - k[None, :]).abs() > w  # (w, 3w)
    return (far[:, None, :, None] | far[None, :, None, :]).reshape(w * w, 9 * w * w)


class LongformerAttention(nn.Module):
    """
    Multi-head Vision Longformer attention over ``[globals; local map]`` tokens.

    Local queries attend all global tokens and a local neighbourhood: in ``window_mode="chunk"``
    the map is cut into w x w chunks and every query of a chunk attends all tokens of the 3 x 3
    chunks around its own; in ``"exact"`` each query attends the (2w + 1)^2 window centred on
    it. Both are clipped at the map border (never shifted). Global queries attend all tokens.
    One softmax covers global and local keys. Logits get a learned per-head relative-position
    bias: a ``((4w - 1)^2, heads)`` table for local pairs, per-head constants for global
    query -> local key, local query -> global key and global -> global pairs.

    Parameter names are those of the published ViL models (``query``, ``kv``, ``proj``,
    ``*_global``, ``local_relative_position_bias_table``, ``g2l_relative_position_bias``,
    ``g2g_relative_position_bias``).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        num_global: int,
        window: int,
        window_mode: str = "chunk",
        share_global_weights: bool = True,
        qkv_bias: bool = True,
        attn_impl: str = "auto",
    ) -> None:
        """
        Args:
            dim: token channels.
            num_heads: attention heads (must divide ``dim``).
            num_global: number of global tokens at the front of the sequence.
            window: chunk / window size w.
            window_mode: "chunk" or "exact".
            share_global_weights: global tokens use the local ``query``/``kv``/``proj``; with
                False they have their own ``query_global``/``kv_global``/``proj_global`` (local
                queries still see the globals' keys through ``kv``).
            qkv_bias: learnable bias of the query and key/value projections.
            attn_impl: "auto", "eager", "sdpa", "recompute" or "dense" (see
                :func:`resolve_vil_attn_impl`).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode={window_mode!r} is unknown; use one of {WINDOW_MODES}")
        if attn_impl not in VIL_ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is unknown; use one of {VIL_ATTN_IMPLS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.num_global = num_global
        self.window = window
        self.window_mode = window_mode
        self.attn_impl = attn_impl

        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.share_global_weights = share_global_weights
        if num_global and not share_global_weights:
            self.query_global = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv_global = nn.Linear(dim, 2 * dim, bias=qkv_bias)
            self.proj_global = nn.Linear(dim, dim)

        self.local_relative_position_bias_table = nn.Parameter(
            torch.zeros((4 * window - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.local_relative_position_bias_table, std=0.02)
        if num_global:
            # [0]: global query -> local key, [1]: local query -> global key
            self.g2l_relative_position_bias = nn.Parameter(torch.zeros(2, num_heads, num_global))
            self.g2g_relative_position_bias = nn.Parameter(
                torch.zeros(num_heads, num_global, num_global)
            )
            nn.init.trunc_normal_(self.g2l_relative_position_bias, std=0.02)
            nn.init.trunc_normal_(self.g2g_relative_position_bias, std=0.02)
        self.register_buffer("bias_index", relative_bias_index(window), persistent=False)
        outside = exact_window_outside(window) if window_mode == "exact" else None
        self.register_buffer("window_outside", outside, persistent=False)
        # Border validity of the key regions per map size (see _padding_map).
        self._padding_cache: Dict[Tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, globals={self.num_global}, window={self.window}, "
            f"mode={self.window_mode}, shared={self.share_global_weights}, "
            f"impl={self.attn_impl}"
        )

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """
        Args:
            x: (B, G + H * W, dim) tokens, globals first, locals in raster order.
            hw: (H, W) of the local map.

        Returns:
            (B, G + H * W, dim) tokens.
        """
        B, N, C = x.shape
        G = self.num_global
        H, W = hw
        if N != G + H * W:
            raise ValueError(
                f"LongformerAttention got {N} tokens, expected {G} global + {H}x{W} local"
            )
        shared = self.share_global_weights or not G
        # Local queries; keys and values of all tokens (the globals' ones included).
        q_local = self.query(x[:, G:])  # (B, HW, C)
        kv = self.kv(x)  # (B, N, 2C)
        k, v = kv[..., :C], kv[..., C:]
        table = self.local_relative_position_bias_table
        impl = resolve_vil_attn_impl(
            self.attn_impl, torch.is_grad_enabled() and table.requires_grad, not x.is_cuda
        )
        if impl == "dense":
            out_local = self._local_dense(q_local, k, v, hw)
        elif impl == "recompute":
            to_global = self.g2l_relative_position_bias[1] if G else None
            out_local = chunk_attention(
                q_local, kv, table, to_global, self.bias_index, self.window_outside, hw,
                self.num_heads, self.scale,
            )  # fmt: skip
        else:
            out_local = self._local_chunked(q_local, k, v, hw, impl)
        out_local = self.proj(out_local)  # (B, HW, C)
        if not G:
            return out_local
        if shared:
            q_global, k_global, v_global = self.query(x[:, :G]), k, v
        else:
            kv_global = self.kv_global(x)
            q_global = self.query_global(x[:, :G])
            k_global, v_global = kv_global[..., :C], kv_global[..., C:]
        out_global = self._global_rows(q_global, k_global, v_global)  # (B, G, C)
        out_global = (self.proj if shared else self.proj_global)(out_global)
        return torch.cat([out_global, out_local], dim=1)

    # ---------------------------------------------------------------- bias and geometry

    def _local_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """
        (heads, w^2, G + 9w^2) logit bias of a chunk's queries: local query -> global key
        constants, then the table entries of the 3w x 3w region; -inf outside the exact window
        in "exact" mode.
        """
        table = self.local_relative_position_bias_table.to(dtype)
        # (w^2, 9w^2, heads) -> (heads, w^2, 9w^2)
        bias = table[self.bias_index].permute(2, 0, 1)
        if self.window_outside is not None:
            bias = bias.masked_fill(self.window_outside, float("-inf"))
        if not self.num_global:
            return bias
        to_global = self.g2l_relative_position_bias[1].to(dtype)  # (heads, G)
        to_global = to_global[:, None, :].expand(-1, bias.shape[1], -1)
        return torch.cat([to_global, bias], dim=-1)

    def _padding_map(self, hw: Tuple[int, int], device: torch.device) -> torch.Tensor:
        """
        (rows * w + 2w, cols * w + 2w) bool: which positions of the map, padded by w on every
        side and to whole chunks, lie outside the real map. Cached per map size.
        """
        key = (hw, device)
        cached = None if torch.compiler.is_compiling() else self._padding_cache.get(key)
        if cached is not None:
            return cached
        w = self.window
        rows, cols = (_padded_axis(n, w, device) for n in hw)
        padding = ~(rows[:, None] & cols[None, :])
        if not torch.compiler.is_compiling():
            if len(self._padding_cache) >= 16:
                self._padding_cache.clear()
            self._padding_cache[key] = padding
        return padding

    # ---------------------------------------------------------------- local queries

    def _local_chunked(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int], impl: str
    ) -> torch.Tensor:
        """
        Local rows, chunk by chunk: the queries of each w x w chunk against the globals and the
        3w x 3w region around the chunk, gathered from the zero-padded map.

        Args:
            q: (B, H * W, C) local queries.
            k, v: (B, G + H * W, C) keys and values of all tokens.
            hw: (H, W).
            impl: "eager" or "sdpa".

        Returns:
            (B, H * W, C) attention outputs (before ``proj``).
        """
        B, _, C = q.shape
        H, W = hw
        G, nh, d, w = self.num_global, self.num_heads, self.head_dim, self.window
        # (B, H * W, C) -> (B, nh, H, W, d) views
        q_map = (q * self.scale).view(B, H, W, nh, d).permute(0, 3, 1, 2, 4)
        k_map, v_map = (t[:, G:].reshape(B, H, W, nh, d).permute(0, 3, 1, 2, 4) for t in (k, v))
        k_glob, v_glob = (t[:, :G].reshape(B, G, nh, d).transpose(1, 2) for t in (k, v))
        bias = self._local_bias(q.dtype)  # (nh, w^2, S), S = G + 9w^2
        padding = self._padding_map(hw, q.device)

        if impl == "eager":
            q_c = _query_chunks(q_map, w)  # (B, nh, rows, cols, w^2, d)
            k_c = _key_regions(k_map, k_glob, w)  # (B, nh, rows, cols, S, d)
            v_c = _key_regions(v_map, v_glob, w)
            scores = q_c @ k_c.transpose(-2, -1) + bias[:, None, None]
            # (rows, cols, 9w^2) keys of each region in the padding; globals never are.
            outside = padding.unfold(0, 3 * w, w).unfold(1, 3 * w, w).flatten(2)
            globals_inside = outside.new_zeros(*outside.shape[:2], G)
            outside = torch.cat([globals_inside, outside], -1)[:, :, None]  # (rows, cols, 1, S)
            scores = scores.masked_fill(outside, float("-inf"))
            out = scores.softmax(dim=-1) @ v_c  # (B, nh, rows, cols, w^2, d)
        else:
            out = self._sdpa_chunks(q_map, k_map, v_map, k_glob, v_glob, bias, padding)
        return _unchunk(out[..., :d], hw)

    def _sdpa_chunks(
        self,
        q_map: torch.Tensor,
        k_map: torch.Tensor,
        v_map: torch.Tensor,
        k_glob: torch.Tensor,
        v_glob: torch.Tensor,
        bias: torch.Tensor,
        padding: torch.Tensor,
    ) -> torch.Tensor:
        """
        One ``scaled_dot_product_attention`` call over all chunks, without a score tensor.

        Keys in the padding are removed by an extra q/k column: 1 in every query, and in every
        key 0 inside the map or a large negative value in the padding (set once on the padded
        map, before the regions are gathered). The relative-position bias is either the SDPA
        mask (one (heads, w^2, S) block broadcast over all chunks) or, when it needs a gradient,
        folded into the dot product: each query carries a one-hot of its position in the chunk
        (w^2 columns) and each key the bias towards every chunk position, so that
        ``q' . k' = scale * q . k + bias[query position, key]``, and the bias gradient arrives
        through the key gradient of the fused kernel.

        Args:
            q_map: (B, heads, H, W, d) local queries, scaled.
            k_map, v_map: (B, heads, H, W, d) local keys and values.
            k_glob, v_glob: (B, heads, G, d) keys and values of the global tokens.
            bias: (heads, w^2, S) from :meth:`_local_bias`.
            padding: the padded-map mask of :meth:`_padding_map`.

        Returns:
            (B, heads, rows, cols, w^2, width) outputs; the first d columns are the result.
        """
        B, nh, _, _, d = q_map.shape
        w = self.window
        w2 = w * w
        dtype = q_map.dtype
        fold_bias = torch.is_grad_enabled() and bias.requires_grad
        folded = w2 if fold_bias else 0
        fill = -(d + 1 + folded) % _width_multiple(q_map)  # zero columns
        # Queries: [scale * q, 1, one-hot of the position in the chunk if folded, 0...].
        q_extra = torch.zeros(w2, 1 + folded + fill, dtype=dtype, device=q_map.device)
        q_extra[:, 0] = 1
        if fold_bias:
            q_extra[:, 1 : 1 + w2] = torch.eye(w2, dtype=dtype, device=q_map.device)
        q_c = _query_chunks(q_map, w, q_extra)  # (B, nh, rows, cols, w^2, width)
        # Keys: [k, padding penalty, bias towards each position in the chunk if folded, 0...].
        penalty = torch.zeros(padding.shape, dtype=dtype, device=padding.device)
        penalty = penalty.masked_fill(padding, _large_negative(dtype))
        extra = None
        if fold_bias:
            extra = bias.transpose(1, 2)  # (nh, S, w^2)
            if self.window_outside is not None:
                extra = extra.clamp_min(_large_negative(dtype))  # finite for the kernel
            extra = F.pad(extra, (0, fill))
        elif fill:
            extra = bias.new_zeros(nh, bias.shape[-1], fill)
        k_c = _key_regions(k_map, k_glob, w, d + 1, penalty, extra)
        width = k_c.shape[-1]  # (B, nh, rows, cols, S, width)
        v_c = _key_regions(v_map, v_glob, w, width)
        rows, cols, S = k_c.shape[2:5]
        # Chunks take the place of SDPA's heads dimension: (B * nh, rows * cols, tokens, width).
        # Every size is explicit (no -1), so that an empty batch (B = 0) reshapes too.
        q_shape = (B * nh, rows * cols, w2, width)
        kv_shape = (B * nh, rows * cols, S, width)
        mask = None
        if not fold_bias:  # (B * nh, 1, w^2, S): one bias block per head, for all chunks
            mask = bias[None].expand(B, -1, -1, -1).reshape(B * nh, 1, w2, S)
        out = F.scaled_dot_product_attention(
            q_c.view(q_shape), k_c.view(kv_shape), v_c.view(kv_shape), attn_mask=mask, scale=1.0
        )
        return out.view(B, nh, rows, cols, w2, width)

    def _local_dense(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int]
    ) -> torch.Tensor:
        """
        Local rows as one attention of all local queries over all tokens with an (HW, N) mask.

        Args:
            q: (B, H * W, C) local queries.
            k, v: (B, G + H * W, C).
            hw: (H, W).

        Returns:
            (B, H * W, C) attention outputs (before ``proj``).
        """
        B, L, C = q.shape
        H, W = hw
        G, nh, d, w = self.num_global, self.num_heads, self.head_dim, self.window
        dev = q.device
        r = torch.arange(H, device=dev).repeat_interleave(W)  # (HW,)
        c = torch.arange(W, device=dev).repeat(H)
        dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]  # (HW, HW)
        if self.window_mode == "exact":
            allowed = (dr.abs() <= w) & (dc.abs() <= w)
        else:
            allowed = ((r[:, None] // w - r[None, :] // w).abs() <= 1) & (
                (c[:, None] // w - c[None, :] // w).abs() <= 1
            )
        index = (dr.clamp(-2 * w + 1, 2 * w - 1) + 2 * w - 1) * (4 * w - 1) + (
            dc.clamp(-2 * w + 1, 2 * w - 1) + 2 * w - 1
        )
        table = self.local_relative_position_bias_table.to(q.dtype)
        mask = table[index].permute(2, 0, 1).masked_fill(~allowed, float("-inf"))  # (nh, L, L)
        if G:
            to_global = self.g2l_relative_position_bias[1].to(q.dtype)[:, None, :]
            mask = torch.cat([to_global.expand(-1, L, -1), mask], dim=-1)  # (nh, L, N)
        N = k.shape[1]  # explicit token counts (no -1): an empty batch reshapes too
        out = F.scaled_dot_product_attention(
            q.view(B, L, nh, d).transpose(1, 2),
            k.reshape(B, N, nh, d).transpose(1, 2),
            v.reshape(B, N, nh, d).transpose(1, 2),
            attn_mask=mask[None],
            scale=self.scale,
        )  # (B, nh, L, d)
        return out.transpose(1, 2).reshape(B, L, C)

    # ---------------------------------------------------------------- global queries

    def _global_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """
        Global rows: each global query attends every token (an explicit (G x N) product; G is
        small).

        Args:
            q: (B, G, C) global queries.
            k, v: (B, N, C) keys and values of all tokens.

        Returns:
            (B, G, C) attention outputs (before the output projection).
        """
        B, G, C = q.shape
        N = k.shape[1]
        nh, d = self.num_heads, self.head_dim
        q = q.view(B, G, nh, d).transpose(1, 2) * self.scale  # (B, nh, G, d)
        k = k.reshape(B, N, nh, d).transpose(1, 2)  # (B, nh, N, d)
        v = v.reshape(B, N, nh, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1)  # (B, nh, G, N)
        g2g = self.g2g_relative_position_bias.to(q.dtype)  # (nh, G, G)
        g2l = self.g2l_relative_position_bias[0].to(q.dtype)  # (nh, G)
        scores = torch.cat([scores[..., :G] + g2g, scores[..., G:] + g2l[..., None]], dim=-1)
        out = scores.softmax(dim=-1) @ v  # (B, nh, G, d)
        return out.transpose(1, 2).reshape(B, G, C)


def _padded_axis(size: int, window: int, device: torch.device) -> torch.Tensor:
    """(chunks * w + 2w,) bool: which positions of an axis, padded by w before and by w plus
    the rest of the last chunk after, are real."""
    pos = torch.arange(ceil_div(size, window) * window + 2 * window, device=device) - window
    return (pos >= 0) & (pos < size)


def _query_chunks(q_map: torch.Tensor, window: int, extra: Optional[torch.Tensor] = None):
    """
    Cuts a query map into w x w chunks, zero-padding it to whole chunks.

    Args:
        q_map: (B, heads, H, W, d).
        window: chunk side w.
        extra: (w^2, e) columns appended to the queries, by position in the chunk, or None.

    Returns:
        (B, heads, rows, cols, w^2, d + e).
    """
    B, nh, H, W, d = q_map.shape
    w = window
    rows, cols = ceil_div(H, w), ceil_div(W, w)
    e = 0 if extra is None else extra.shape[-1]
    padded = F.pad(q_map, (0, e, 0, cols * w - W, 0, rows * w - H))
    # (B, nh, rows, w, cols, w, d + e) -> (B, nh, rows, cols, w, w, d + e)
    chunks = padded.view(B, nh, rows, w, cols, w, d + e).permute(0, 1, 2, 4, 3, 5, 6)
    if extra is not None:
        chunks[..., d:] = extra.view(w, w, e)
    return chunks.reshape(B, nh, rows, cols, w * w, d + e)


class _GatherRegions(torch.autograd.Function):
    """
    For every w x w chunk of a padded map: the global tokens, then the 3w x 3w region around the
    chunk (raster order), with optional constant-per-head extra columns appended to every token.

    The forward is one copy from a strided (unfolded) view of the map. The backward adds each of
    the 9 neighbour blocks of the region gradients back onto the map: 9 strided adds, instead of
    the generic (much slower) backward of overlapping ``unfold`` windows or of slice
    assignments, which clone the whole gradient once per assignment.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        padded: torch.Tensor,
        glob: torch.Tensor,
        extra: Optional[torch.Tensor],
        window: int,
    ) -> torch.Tensor:
        """
        Args:
            padded: (B, heads, (rows + 2) * w, (cols + 2) * w, c) map, padded by w on every side
                and to whole chunks.
            glob: (B, heads, G, c) global tokens.
            extra: (heads, G + 9w^2, e) columns appended to every token of every chunk, or None.
            window: chunk side w.

        Returns:
            (B, heads, rows, cols, G + 9w^2, c + e).
        """
        B, nh, ph, pw, c = padded.shape
        G, w = glob.shape[2], window
        rows, cols = ph // w - 2, pw // w - 2
        e = 0 if extra is None else extra.shape[-1]
        # (B, nh, rows, cols, c, 3w, 3w) strided view -> (B, nh, rows, cols, 3w, 3w, c)
        regions = padded.unfold(2, 3 * w, w).unfold(3, 3 * w, w).permute(0, 1, 2, 3, 5, 6, 4)
        out = padded.new_empty(B, nh, rows, cols, G + 9 * w * w, c + e)
        out[..., G:, :c].view(B, nh, rows, cols, 3 * w, 3 * w, c).copy_(regions)
        if G:
            out[..., :G, :c] = glob[:, :, None, None]
        if extra is not None:
            out[..., c:] = extra[:, None, None]
        ctx.geometry = (padded.shape, G, w, c, extra is not None)
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], None]:
        (B, nh, ph, pw, c), G, w, c, has_extra = ctx.geometry
        rows, cols = ph // w - 2, pw // w - 2
        grad_extra = grad[..., c:].sum((0, 2, 3)) if has_extra else None
        grad_glob = grad[..., :G, :c].sum((2, 3))
        # (B, nh, rows, cols, 3, w, 3, w, c): the region gradient as 3 x 3 neighbour blocks
        blocks = grad[..., G:, :c].unflatten(-2, (3, w, 3, w))
        grad_map = grad.new_zeros(B, nh, rows + 2, w, cols + 2, w, c)
        for i in range(3):
            for j in range(3):
                # the (i, j) neighbour of chunk (r, s) is chunk (r + i, s + j) of the padded map
                grad_map[:, :, i : i + rows, :, j : j + cols] += blocks[..., i, :, j, :, :].permute(
                    0, 1, 2, 4, 3, 5, 6
                )
        return grad_map.view(B, nh, ph, pw, c), grad_glob, grad_extra, None


def _key_regions(
    local: torch.Tensor,
    glob: torch.Tensor,
    window: int,
    width: Optional[int] = None,
    penalty: Optional[torch.Tensor] = None,
    extra: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Gathers, for every w x w chunk, the global tokens and the 3w x 3w region of the zero-padded
    map around the chunk (see :class:`_GatherRegions`).

    Args:
        local: (B, heads, H, W, d) keys or values of the local map.
        glob: (B, heads, G, d) keys or values of the global tokens.
        window: chunk side w.
        width: columns taken from the map, >= d; those beyond d are zero. Default: d, or d + 1
            with ``penalty``.
        penalty: (rows * w + 2w, cols * w + 2w) values of column d on the padded map (the
            globals get 0), or None.
        extra: (heads, G + 9w^2, e) columns appended after ``width``, the same for every chunk,
            or None.

    Returns:
        (B, heads, rows, cols, G + 9w^2, width + e), globals first, region in raster order.
    """
    B, nh, H, W, d = local.shape
    w = window
    rows, cols = ceil_div(H, w), ceil_div(W, w)
    c = width or d + int(penalty is not None)
    padded = F.pad(local, (0, c - d, w, cols * w - W + w, w, rows * w - H + w))
    glob = F.pad(glob, (0, c - d))
    if is_tracing_or_exporting():
        return _gather_regions_traceable(padded, glob, extra, w, penalty, d)
    if penalty is not None:
        padded[..., d] = penalty
    return _GatherRegions.apply(padded, glob, extra, w)


def _gather_regions_traceable(
    padded: torch.Tensor,
    glob: torch.Tensor,
    extra: Optional[torch.Tensor],
    window: int,
    penalty: Optional[torch.Tensor],
    column: int,
) -> torch.Tensor:
    """
    :class:`_GatherRegions`'s forward (with ``penalty`` written into column ``column`` of
    ``padded`` first) from slices, stacks and concatenations only, for tracing and export:
    exporters cannot record a custom autograd function, and the legacy ONNX exporter neither an
    in-place write nor an ``unfold`` of a tensor of unknown shape.
    """
    B, nh, ph, pw, c = padded.shape
    G, w = glob.shape[2], window
    rows, cols = ph // w - 2, pw // w - 2
    if penalty is not None:
        penalty = penalty.to(padded.dtype).expand(B, nh, ph, pw)[..., None]
        padded = torch.cat([padded[..., :column], penalty, padded[..., column + 1 :]], -1)
    # the (i, j) neighbour of every chunk, (B, nh, rows, cols, w, w, c), stacked in the raster
    # order of the 3w x 3w region: (B, nh, rows, cols, 3, w, 3, w, c)
    neighbours = [
        torch.stack(
            [
                padded[:, :, i * w : (i + rows) * w, j * w : (j + cols) * w]
                .reshape(B, nh, rows, w, cols, w, c)
                .transpose(3, 4)
                for j in range(3)
            ],
            5,
        )
        for i in range(3)
    ]
    tokens = torch.stack(neighbours, 4).reshape(B, nh, rows, cols, 9 * w * w, c)
    if G:
        tokens = torch.cat([glob[:, :, None, None].expand(B, nh, rows, cols, G, c), tokens], 4)
    if extra is not None:
        extra = extra[None, :, None, None].expand(B, nh, rows, cols, G + 9 * w * w, -1)
        tokens = torch.cat([tokens, extra], -1)
    return tokens


def _unchunk(chunks: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """
    Inverse of :func:`_query_chunks`: (B, heads, rows, cols, w^2, d) -> (B, H * W, heads * d),
    the padding cropped.
    """
    B, nh, rows, cols, w2, d = chunks.shape
    w = math.isqrt(w2)
    H, W = hw
    # (B, nh, rows, cols, w, w, d) -> (B, rows, w, cols, w, nh, d)
    x = chunks.unflatten(-2, (w, w)).permute(0, 2, 4, 3, 5, 1, 6)
    x = x.reshape(B, rows * w, cols * w, nh * d)[:, :H, :W]
    return x.reshape(B, H * W, nh * d)
