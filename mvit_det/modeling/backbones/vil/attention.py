"""Vision Longformer attention (ViL): local attention in a window or neighbourhood of chunks,
global tokens, and relative-position bias (its cores are in :mod:`.cores`).

Token layout: ``[G global tokens; H * W local tokens in raster order]``. See docs/vil.md for the
rules this module implements.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import torch
import torch.nn as nn

from ...layers import is_tracing_or_exporting
from .checks import check_attention_args
from .cores import VIL_CORES
from .geometry import exact_window_outside, padded_axis, relative_bias_index

__all__ = ["ChunkInputs", "LongformerAttention"]


class ChunkInputs(NamedTuple):
    """
    What the chunked cores start from (:meth:`LongformerAttention.chunk_inputs`).

    Attributes:
        q_map: (B, heads, H, W, d) local queries, scaled.
        k_map, v_map: (B, heads, H, W, d) local keys and values.
        k_glob, v_glob: (B, heads, G, d) keys and values of the global tokens.
        bias: (heads, w^2, G + 9w^2) logit bias of a chunk's queries (see ``_local_bias``).
        padding: the padded-map mask of ``_padding_map``.
    """

    q_map: torch.Tensor
    k_map: torch.Tensor
    v_map: torch.Tensor
    k_glob: torch.Tensor
    v_glob: torch.Tensor
    bias: torch.Tensor
    padding: torch.Tensor


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
            attn_impl: a name of :data:`~.cores.VIL_CORES`, or "auto" (see
                :func:`~.cores.auto_core`).
        """
        super().__init__()
        check_attention_args(dim, num_heads, window_mode, attn_impl)
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
        core = VIL_CORES.pick(
            self.attn_impl, torch.is_grad_enabled() and table.requires_grad, not x.is_cuda
        )
        out_local = self.proj(core(self, q_local, k, v, hw))  # (B, HW, C)
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
        # Not cached when compiled, traced or exported: the sizes are symbolic there (a cached
        # mask would be one of another graph, or freeze the size).
        cache = not (torch.compiler.is_compiling() or is_tracing_or_exporting())
        key = (hw, device)
        cached = self._padding_cache.get(key) if cache else None
        if cached is not None:
            return cached
        w = self.window
        rows, cols = (padded_axis(n, w, device) for n in hw)
        padding = ~(rows[:, None] & cols[None, :])
        if cache:
            if len(self._padding_cache) >= 16:
                self._padding_cache.clear()
            self._padding_cache[key] = padding
        return padding

    def chunk_inputs(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int]
    ) -> ChunkInputs:
        """
        The local queries, keys and values as maps, with the bias and the padding mask: what the
        chunked cores start from.

        Args:
            q: (B, H * W, C) local queries.
            k, v: (B, G + H * W, C) keys and values of all tokens.
            hw: (H, W).
        """
        B = q.shape[0]
        H, W = hw
        G, nh, d = self.num_global, self.num_heads, self.head_dim
        # (B, H * W, C) -> (B, nh, H, W, d) views
        q_map = (q * self.scale).view(B, H, W, nh, d).permute(0, 3, 1, 2, 4)
        k_map, v_map = (t[:, G:].reshape(B, H, W, nh, d).permute(0, 3, 1, 2, 4) for t in (k, v))
        k_glob, v_glob = (t[:, :G].reshape(B, G, nh, d).transpose(1, 2) for t in (k, v))
        bias = self._local_bias(q.dtype)  # (nh, w^2, S), S = G + 9w^2
        padding = self._padding_map(hw, q.device)
        return ChunkInputs(q_map, k_map, v_map, k_glob, v_glob, bias, padding)

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
