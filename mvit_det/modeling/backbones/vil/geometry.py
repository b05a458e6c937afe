"""ViL's geometry: relative-position bias indexes, and cutting token maps into chunks and the
key regions around them (forward and backward) for the chunked attention cores."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ...layers import ceil_div, is_tracing_or_exporting, unflatten_dim, zero_pad_end

__all__ = [
    "exact_window_outside",
    "key_regions",
    "padded_axis",
    "query_chunks",
    "region_padding",
    "relative_bias_index",
    "unchunk",
]


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


def padded_axis(size: int, window: int, device: torch.device) -> torch.Tensor:
    """(chunks * w + 2w,) bool: which positions of an axis, padded by w before and by w plus
    the rest of the last chunk after, are real."""
    pos = torch.arange(ceil_div(size, window) * window + 2 * window, device=device) - window
    return (pos >= 0) & (pos < size)


def query_chunks(q_map: torch.Tensor, window: int, extra: Optional[torch.Tensor] = None):
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
    if is_tracing_or_exporting():
        return _query_chunks_traceable(q_map, w, extra)
    e = 0 if extra is None else extra.shape[-1]
    padded = F.pad(q_map, (0, e, 0, cols * w - W, 0, rows * w - H))
    # (B, nh, rows, w, cols, w, d + e) -> (B, nh, rows, cols, w, w, d + e)
    chunks = padded.view(B, nh, rows, w, cols, w, d + e).permute(0, 1, 2, 4, 3, 5, 6)
    if extra is not None:
        chunks[..., d:] = extra.view(w, w, e)
    return chunks.reshape(B, nh, rows, cols, w * w, d + e)


def _query_chunks_traceable(
    q_map: torch.Tensor, window: int, extra: Optional[torch.Tensor]
) -> torch.Tensor:
    """
    :func:`query_chunks` for tracing and export: the map is padded to whole chunks with zeros
    of traced sizes (a traced ``F.pad`` freezes its widths) and ``extra`` is concatenated (no
    in-place write), so the graph serves every map size. Same values as :func:`query_chunks`.
    """
    B, nh, H, W, d = q_map.shape
    w = window
    rows, cols = ceil_div(H, w), ceil_div(W, w)
    padded = zero_pad_end(zero_pad_end(q_map, 2, rows * w - H), 3, cols * w - W)
    # (B, nh, rows, w, cols, w, d) -> (B, nh, rows, cols, w, w, d) -> (..., w^2, d)
    chunks = padded.reshape(B, nh, rows, w, cols, w, d).permute(0, 1, 2, 4, 3, 5, 6)
    chunks = chunks.reshape(B, nh, rows, cols, w * w, d)
    if extra is None:
        return chunks
    return torch.cat([chunks, extra.expand(B, nh, rows, cols, w * w, extra.shape[-1])], -1)


class GatherRegions(torch.autograd.Function):
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


def key_regions(
    local: torch.Tensor,
    glob: torch.Tensor,
    window: int,
    width: Optional[int] = None,
    penalty: Optional[torch.Tensor] = None,
    extra: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Gathers, for every w x w chunk, the global tokens and the 3w x 3w region of the zero-padded
    map around the chunk (see :class:`GatherRegions`).

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
    if is_tracing_or_exporting():
        # The size-dependent padding with zeros of traced sizes (a traced F.pad freezes its
        # widths); the constant widths (w on every side, the columns) by F.pad.
        padded = zero_pad_end(zero_pad_end(local, 2, rows * w - H), 3, cols * w - W)
        padded = F.pad(padded, (0, c - d, w, w, w, w))
        glob = F.pad(glob, (0, c - d))
        return _gather_regions_traceable(padded, glob, extra, w, penalty, d)
    padded = F.pad(local, (0, c - d, w, cols * w - W + w, w, rows * w - H + w))
    glob = F.pad(glob, (0, c - d))
    if penalty is not None:
        padded[..., d] = penalty
    return GatherRegions.apply(padded, glob, extra, w)


def _gather_regions_traceable(
    padded: torch.Tensor,
    glob: torch.Tensor,
    extra: Optional[torch.Tensor],
    window: int,
    penalty: Optional[torch.Tensor],
    column: int,
) -> torch.Tensor:
    """
    :class:`GatherRegions`'s forward (with ``penalty`` written into column ``column`` of
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


def region_padding(padding: torch.Tensor, window: int) -> torch.Tensor:
    """
    Which keys of every chunk's 3w x 3w region lie in the padding.

    Args:
        padding: (rows * w + 2w, cols * w + 2w) bool map of the padded positions.
        window: chunk side w.

    Returns:
        (rows, cols, 9w^2) bool, the region in raster order.
    """
    w = window
    if not is_tracing_or_exporting():
        return padding.unfold(0, 3 * w, w).unfold(1, 3 * w, w).flatten(2)
    # Traced: slices and stacks (the legacy ONNX exporter has no unfold of an unknown size).
    rows, cols = padding.shape[0] // w - 2, padding.shape[1] // w - 2
    # the (i, j) neighbour of every chunk, (rows, cols, w, w), in the region's raster order:
    # (rows, cols, 3, w, 3, w)
    neighbours = [
        torch.stack(
            [
                padding[i * w : (i + rows) * w, j * w : (j + cols) * w]
                .reshape(rows, w, cols, w)
                .transpose(1, 2)
                for j in range(3)
            ],
            3,
        )
        for i in range(3)
    ]
    return torch.stack(neighbours, 2).reshape(rows, cols, 9 * w * w)


def unchunk(chunks: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """
    Inverse of :func:`query_chunks`: (B, heads, rows, cols, w^2, d) -> (B, H * W, heads * d),
    the padding cropped.
    """
    B, nh, rows, cols, w2, d = chunks.shape
    w = math.isqrt(w2)
    H, W = hw
    # (B, nh, rows, cols, w, w, d) -> (B, rows, w, cols, w, nh, d)
    x = unflatten_dim(chunks, -2, [w, w]).permute(0, 2, 4, 3, 5, 1, 6)
    x = x.reshape(B, rows * w, cols * w, nh * d)[:, :H, :W]
    return x.reshape(B, H * W, nh * d)
