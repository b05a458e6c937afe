"""Multi-Head Pooling Attention of MViTv2 (its cores are in :mod:`.cores`)."""

from typing import List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import ceil_div, is_tracing_or_exporting, unflatten_dim
from .checks import check_attention_args
from .cores import MVIT_CORES, Tables, scripted_core
from .geometry import relative_position_table, window_bands, window_partition, window_unpartition

__all__ = ["MultiScaleAttention"]


def _pool(
    x: torch.Tensor, pool: torch.Tensor, stride: List[int], padding: List[int], num_heads: int
) -> torch.Tensor:
    """
    Per-head depthwise pooling.

    The pooling kernel is shared by all heads (it has ``head_dim`` channels); it is applied to all
    heads at once as a depthwise conv over ``heads * head_dim`` channels with the kernel repeated,
    which avoids folding heads into the batch.

    Args:
        x: (B, H, W, heads * head_dim) tokens.
        pool: (head_dim, 1, kh, kw) weight of the depthwise pooling conv.
        stride: its stride.
        padding: its padding.
        num_heads: number of heads.

    Returns:
        (B, H', W', heads, head_dim) pooled tokens (to be normalised).
    """
    weight = pool.repeat(num_heads, 1, 1, 1)
    # (B, H, W, C) -> (B, C, H, W), a channels-last view of contiguous tokens: no copy.
    x = F.conv2d(
        x.permute(0, 3, 1, 2), weight, None, stride=stride, padding=padding, groups=weight.shape[0]
    )
    # (B, C, H', W') -> (B, H', W', heads, head_dim)
    return unflatten_dim(x.permute(0, 2, 3, 1), -1, [num_heads, -1])


class MultiScaleAttention(nn.Module):
    """
    Multi-Head Pooling Attention (MViTv2): q, k and v are pooled per head by a depthwise conv and
    normalised, attention uses decomposed relative positions and a residual pooling connection,
    optionally inside non-overlapping windows of the pooled maps.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        pool_kernel: Tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[int] = None,
        attn_impl: str = "auto",
    ) -> None:
        """
        Args:
            dim: input channels.
            dim_out: output channels (q, k and v have dim_out channels).
            num_heads: attention heads.
            qkv_bias: add a learnable bias to the q, k, v projection.
            norm_layer: normalisation applied to pooled q, k, v over the head dimension.
            pool_kernel: kernel of the q, k, v pooling convs.
            stride_q: stride of the q pooling.
            stride_kv: stride of the k and v pooling.
            residual_pooling: add the pooled q to the attention output.
            window_size: window side counted in tokens of the block's input map; the q window is
                ``window_size // stride_q`` and the kv window ``window_size // stride_kv``.
                0 means global attention.
            use_rel_pos: add decomposed relative-position terms to the attention logits.
            rel_pos_zero_init: zero-initialise the relative-position tables.
            input_size: side of the block's input token grid at the pretraining size; sets the
                relative-position table length. Required when ``use_rel_pos``.
            attn_impl: a name of :data:`~.cores.MVIT_CORES`, or "auto".
        """
        super().__init__()
        check_attention_args(dim_out, num_heads, window_size, stride_q, stride_kv, attn_impl)
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.attn_impl = attn_impl

        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        padding = [k // 2 for k in pool_kernel]

        def pooling(stride: int) -> nn.Conv2d:
            return nn.Conv2d(
                head_dim, head_dim, pool_kernel, stride, padding, groups=head_dim, bias=False
            )

        # the convs' strides and padding, also readable in TorchScript
        self.pool_strides = [[stride_q, stride_q], [stride_kv, stride_kv]]
        self.pool_padding = padding
        self.pool_q = pooling(stride_q)
        self.norm_q = norm_layer(head_dim)
        self.pool_k = pooling(stride_kv)
        self.norm_k = norm_layer(head_dim)
        self.pool_v = pooling(stride_kv)
        self.norm_v = norm_layer(head_dim)

        self.window_size = window_size
        self.q_window = window_size // stride_q if window_size else None
        self.kv_window = window_size // stride_kv if window_size else None
        self.residual_pooling = residual_pooling

        self.use_rel_pos = use_rel_pos
        self.rel_pos_h = self.rel_pos_w = None  # parameters with use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            length = 2 * max(input_size // stride_q, input_size // stride_kv) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(length, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(length, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, H, W, dim) tokens.

        Returns:
            (B, H', W', dim_out) tokens, H' = ceil(H / stride_q).
        """
        nh = self.num_heads
        # q, k and v as three products with row blocks of the qkv weight rather than chunks of
        # one: each comes out contiguous, so the pooling conv runs on it in channels-last layout
        # and its output feeds the LayerNorm without the two copies a strided chunk costs.
        weights = self.qkv.weight.chunk(3)
        biases: List[Optional[torch.Tensor]] = [None, None, None]  # typed for TorchScript
        if self.qkv.bias is not None:
            biases = [b for b in self.qkv.bias.chunk(3)]
        q = F.linear(x, weights[0], biases[0])
        k = F.linear(x, weights[1], biases[1])
        v = F.linear(x, weights[2], biases[2])
        q_stride, kv_stride, padding = self.pool_strides[0], self.pool_strides[1], self.pool_padding
        # (B, H, W, nh * d) -> (B, Hq, Wq, nh, d) and (B, Hk, Wk, nh, d)
        q = self.norm_q(_pool(q, self.pool_q.weight, q_stride, padding, nh))
        k = self.norm_k(_pool(k, self.pool_k.weight, kv_stride, padding, nh))
        v = self.norm_v(_pool(v, self.pool_v.weight, kv_stride, padding, nh))
        if self.q_window is None:
            tables = self._rel_pos_tables(
                (q.shape[1], q.shape[2]), (k.shape[1], k.shape[2]), q.dtype
            )
            out = self._attend(q, k, v, None, tables)
        else:
            out = self._attend_windows(q, k, v)
        if self.residual_pooling:
            out = out + q
        return self.proj(out.flatten(-2))

    def _rel_pos_tables(
        self, q_hw: Tuple[int, int], k_hw: Tuple[int, int], dtype: torch.dtype
    ) -> Tables:
        """The (q_h, k_h, d) and (q_w, k_w, d) relative-position embeddings, or None without."""
        rel_pos_h, rel_pos_w = self.rel_pos_h, self.rel_pos_w
        if rel_pos_h is None or rel_pos_w is None:
            return None
        table_h = relative_position_table(q_hw[0], k_hw[0], rel_pos_h).to(dtype)
        table_w = relative_position_table(q_hw[1], k_hw[1], rel_pos_w).to(dtype)
        return table_h, table_w

    def _attend_windows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """
        Window attention on (B, H, W, heads, head_dim) maps, returning (B, Hq, Wq, heads, d).

        Keys and values are zero-padded to whole windows (the padded keys take part in the
        softmax, as in the published model). Queries are not padded: the map is attended in
        bands of whole windows and of the cut windows at the bottom and right border, so no work
        is spent on padding queries whose outputs would be dropped. Cut windows use the leading
        rows/columns of the full window's relative positions, looked up once for all bands.
        """
        q_window, kv_window = self.q_window, self.kv_window
        assert q_window is not None and kv_window is not None  # set with window_size > 0
        # (B, Hk, Wk, nh, d) -> (B * windows, nh, kv_window**2, d)
        k_win, k_hw = window_partition(k, (kv_window, kv_window))
        v_win, _ = window_partition(v, (kv_window, kv_window))
        tables = self._rel_pos_tables((q_window, q_window), k_hw, q.dtype)
        if is_tracing_or_exporting():
            # The bands depend on the input size; a traced or scripted graph serves every size,
            # so it pads the queries to whole windows too (the published formulation) and crops.
            return self._attend(q, k_win, v_win, (q_window, q_window), tables)
        return self._attend_bands(q, k_win, v_win, (k.shape[1], k.shape[2]), tables)

    @torch.jit.unused
    def _attend_bands(
        self,
        q: torch.Tensor,
        k_win: torch.Tensor,
        v_win: torch.Tensor,
        k_hw: Tuple[int, int],
        tables: Tables,
    ) -> torch.Tensor:
        """
        :meth:`_attend_windows` band by band: the whole windows, then the cut ones.

        Args:
            q: (B, Hq, Wq, heads, d) queries.
            k_win, v_win: (B * windows, heads, kv_window**2, d) key and value windows.
            k_hw: (Hk, Wk) of the key map before padding.
            tables: relative-position embeddings of the full window, or None.

        Returns:
            (B, Hq, Wq, heads, d) attention outputs.
        """
        B, H, W = q.shape[:3]
        kv_window = self.kv_window
        grid = (B, ceil_div(k_hw[0], kv_window), ceil_div(k_hw[1], kv_window))
        # (B * windows, nh, tokens, d) -> (B, rows, cols, nh, tokens, d)
        k_win, v_win = k_win.unflatten(0, grid), v_win.unflatten(0, grid)
        rows = []
        for q_rows, win_h, grid_rows in window_bands(H, self.q_window):
            cols = []
            for q_cols, win_w, grid_cols in window_bands(W, self.q_window):
                out = self._attend(
                    q[:, q_rows, q_cols],
                    k_win[:, grid_rows, grid_cols].flatten(0, 2),
                    v_win[:, grid_rows, grid_cols].flatten(0, 2),
                    (win_h, win_w),
                    tables,
                )
                cols.append(out)
            rows.append(torch.cat(cols, dim=2) if len(cols) > 1 else cols[0])
        return torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_window: Optional[Tuple[int, int]],
        tables: Tables,
    ) -> torch.Tensor:
        """
        Attention of a (B, Hq, Wq, heads, d) query map that windows of ``q_window`` tile exactly.

        Args:
            q: (B, Hq, Wq, heads, d) queries.
            k, v: (B, Hk, Wk, heads, d) maps for global attention (``q_window`` None), or the
                matching key/value windows (B * windows, heads, tokens, d) otherwise.
            q_window: (rows, cols) of the query windows, or None for global attention.
            tables: relative-position embeddings from :meth:`_rel_pos_tables`, or None.

        Returns:
            (B, Hq, Wq, heads, d) attention outputs.
        """
        q_hw_full = (q.shape[1], q.shape[2])
        # (B, H, W, nh, d) -> (B * windows, nh, tokens, d)
        q_win, q_hw = window_partition(q, q_window)
        if q_window is None:
            k, _ = window_partition(k, None)
            v, _ = window_partition(v, None)
        if torch.jit.is_scripting():
            out = scripted_core(self.attn_impl, q_win, k, v, q_hw, tables, self.scale)
        else:
            out = self._core(q_win, k, v, q_hw, tables)
        return window_unpartition(out, q_window, q_hw_full)

    @torch.jit.unused
    def _core(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_hw: Tuple[int, int],
        tables: Tables,
    ) -> torch.Tensor:
        """The core of :attr:`attn_impl`, from :data:`~.cores.MVIT_CORES`."""
        return MVIT_CORES.pick(self.attn_impl)(q, k, v, q_hw, tables, self.scale)
