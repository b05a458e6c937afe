"""MViT's geometry: windows of token maps and relative/absolute position tables."""

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ...layers import ceil_div, is_tracing_or_exporting, unflatten_dim, zero_pad_end

__all__ = [
    "window_partition",
    "window_unpartition",
    "window_bands",
    "relative_position_table",
    "decomposed_rel_pos_terms",
    "resize_abs_pos",
    "resize_rel_pos",
]


def _pair(window: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(window, int):
        return window, window
    return window


def window_partition(
    x: torch.Tensor, window: Optional[Union[int, Tuple[int, int]]]
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """
    Splits a head-split token map into non-overlapping windows, zero-padding to whole windows.

    Args:
        x: tokens of shape (B, H, W, heads, head_dim).
        window: window size in tokens, an int (square) or (rows, cols); ``None`` makes the whole
            map one window (no padding).

    Returns:
        windows of shape (B * num_windows, heads, win_h * win_w, head_dim), ordered by batch, then
        window row, then window column, and the (win_h, win_w) size of each window.
    """
    B, H, W, nh, d = x.shape
    if window is None:
        # (B, H, W, nh, d) -> (B, nh, H * W, d)
        return x.permute(0, 3, 1, 2, 4).reshape(B, nh, H * W, d), (H, W)
    win_h, win_w = _pair(window)
    if is_tracing_or_exporting():
        # Traced sizes: pad (maybe by 0) with zeros of traced sizes, to sides written as
        # rows * win_h, which torch.export can follow through the view below.
        rows, cols = ceil_div(H, win_h), ceil_div(W, win_w)
        x = zero_pad_end(zero_pad_end(x, 1, rows * win_h - H), 2, cols * win_w - W)
    else:
        pad_h = (win_h - H % win_h) % win_h
        pad_w = (win_w - W % win_w) % win_w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (H + pad_h) // win_h, (W + pad_w) // win_w
    # (B, rows, win_h, cols, win_w, nh, d) -> (B, rows, cols, nh, win_h, win_w, d)
    x = x.view(B, rows, win_h, cols, win_w, nh, d).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B * rows * cols, nh, win_h * win_w, d), (win_h, win_w)


def window_unpartition(
    windows: torch.Tensor, window: Optional[Union[int, Tuple[int, int]]], hw: Tuple[int, int]
) -> torch.Tensor:
    """
    Inverse of :func:`window_partition`: reassembles windows and crops the padding.

    Args:
        windows: (B * num_windows, heads, win_h * win_w, head_dim).
        window: the window size used to partition, or ``None`` for a single whole-map window.
        hw: (H, W) of the map before padding.

    Returns:
        tokens of shape (B, H, W, heads, head_dim).
    """
    H, W = hw
    _, nh, _, d = windows.shape
    if window is None:
        # (B, nh, H * W, d) -> (B, H, W, nh, d)
        return windows.view(-1, nh, H, W, d).permute(0, 2, 3, 1, 4)
    win_h, win_w = _pair(window)
    rows, cols = ceil_div(H, win_h), ceil_div(W, win_w)
    x = windows.view(-1, rows, cols, nh, win_h, win_w, d)
    # (B, rows, cols, nh, win_h, win_w, d) -> (B, rows, win_h, cols, win_w, nh, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, rows * win_h, cols * win_w, nh, d)
    return x[:, :H, :W]


def window_bands(size: int, window: int) -> List[Tuple[slice, int, slice]]:
    """
    Splits one axis of a token map into the band covered by whole windows and the remainder band.

    Window attention pads a map to whole windows; queries in the padding are discarded, so they
    need not be computed. Attending band by band (whole windows, then the partial last window)
    gives the same result for every real query without that work.

    Args:
        size: length of the axis in tokens.
        window: window length along the axis.

    Returns:
        up to two ``(tokens, window_length, window_indexes)`` triples: the token slice of the
        band, the window length inside it, and the slice of window positions it covers.
    """
    # int(): a size may arrive as a tensor or symbolic int; the bands are then those of that size
    # (traced graphs do not use bands: see MultiScaleAttention._attend_windows).
    whole, rest = divmod(int(size), window)
    bands = []
    if whole:
        bands.append((slice(0, whole * window), window, slice(0, whole)))
    if rest:
        bands.append((slice(whole * window, size), rest, slice(whole, whole + 1)))
    return bands


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """
    Linearly interpolates a relative-position table to another number of offsets.

    Args:
        table: (L, head_dim) table.
        length: number of entries wanted.

    Returns:
        (length, head_dim) table in the dtype of ``table`` (interpolated in at least fp32).
    """
    dtype = torch.promote_types(table.dtype, torch.float32)
    # (L, C) -> (1, C, L) -> (1, C, length) -> (length, C)
    resized = F.interpolate(table.to(dtype).t().unsqueeze(0), size=length, mode="linear")
    return resized[0].t().to(table.dtype)  # [0], not squeeze(0): no ONNX If at dynamic sizes


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """
    Looks up the relative-position embedding of every (query, key) pair along one axis.

    The learned table is linearly resized to ``2 * max(q_size, k_size) - 1`` entries when needed,
    and coordinates are scaled to the longer axis when the query and key lengths differ.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: learned table of shape (L, head_dim).

    Returns:
        embeddings of shape (q_size, k_size, head_dim).
    """
    length = 2 * max(q_size, k_size) - 1
    # Traced: the resize stays in the graph (an identity at the table's own length), so the graph
    # also serves input sizes whose length differs.
    if rel_pos.shape[0] != length or is_tracing_or_exporting():
        rel_pos = resize_rel_pos(rel_pos, length)
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    index = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[index.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, q_hw: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Computes the decomposed relative-position terms of MViTv2 attention logits.

    The logit of query (i, j) and key (m, n) receives ``rel_h[..., i, j, m] + rel_w[..., i, j, n]``.

    Args:
        q: queries of shape (..., q_h * q_w, head_dim), not scaled.
        table_h: (Qh, k_h, head_dim) embeddings of :func:`relative_position_table` for the rows,
            Qh >= q_h: the queries may be the top part of a window cut by the map border.
        table_w: (Qw, k_w, head_dim) the same for the columns, Qw >= q_w.
        q_hw: (q_h, q_w) query grid.

    Returns:
        rel_h of shape (..., q_h * q_w, k_h) and rel_w of shape (..., q_h * q_w, k_w).
    """
    q_h, q_w = q_hw
    grid_q = unflatten_dim(q, -2, [q_h, q_w])
    # (..., q_h, q_w, C) x (q_h, k_h, C) -> (..., q_h, q_w, k_h)
    rel_h = torch.einsum("...hwc,hkc->...hwk", grid_q, table_h[:q_h])
    rel_w = torch.einsum("...hwc,wkc->...hwk", grid_q, table_w[:q_w])
    return rel_h.flatten(-3, -2), rel_w.flatten(-3, -2)


def resize_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: Tuple[int, int]) -> torch.Tensor:
    """
    Resizes a pretrained absolute position embedding to a token grid.

    Args:
        abs_pos: (1, N, C) table of a square grid, with one leading class-token slot when
            ``has_cls_token``.
        has_cls_token: whether ``abs_pos`` starts with a class-token slot (it is dropped).
        hw: the (H, W) token grid to produce.

    Returns:
        embeddings of shape (1, H, W, C), bicubically resized when the grid differs.
    """
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    num = abs_pos.shape[1]
    side = int(math.sqrt(num) + 0.5)  # (math.isqrt is not in TorchScript)
    if side * side != num:
        raise ValueError(
            f"absolute position embedding has {num} grid positions, which is not a square grid; "
            "check pretrain_use_cls_token (is there a class-token slot?) and pretrain_img_size"
        )
    # (1, N, C) -> (1, C, side, side)
    grid = abs_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    # Traced: the resize stays in the graph (an identity at the table's own grid), so the graph
    # also serves input sizes whose grid differs.
    if is_tracing_or_exporting() or (side, side) != tuple(hw):
        grid = F.interpolate(grid, size=hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1)
