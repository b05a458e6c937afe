"""The operator behind the "recompute" core of Vision Longformer attention: the local rows of
:class:`~.attention.LongformerAttention` as one differentiable operator that keeps only its
inputs for the backward pass.

The explicit core lets autograd keep, for every chunk, the gathered keys and values of its 3 x 3
chunk neighbourhood (nine copies of every key and value) and the attention probabilities. This
core keeps nothing but q, k, v and the bias parameters: the forward pass and the backward pass each
walk over the map one block of chunk rows at a time, gather the neighbourhoods of that block,
compute its scores and probabilities, and drop them before the next block. The backward pass
recomputes the probabilities exactly as the forward pass made them (every query's whole
neighbourhood lies in its block, so no running softmax statistics are needed) and accumulates the
gradient of the relative-position bias per (head, position in the chunk, key) over all chunks,
added into the table once at the end. No tensor of (tokens x neighbourhood) elements exists at any
time: the largest temporaries are those of one block (:data:`BLOCK_ELEMENTS` scores), small enough
to stay in the CPU's caches, which also makes this core faster than the explicit one on the CPU.

Scores, softmax and all gradients are computed in float32 when the inputs are bfloat16 or float16
(autocast), in the input dtype otherwise.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from ...layers import ceil_div

__all__ = ["BLOCK_ELEMENTS", "chunk_attention"]

# Score elements of one block (at least one chunk row of one image): 8 MiB in float32, small
# enough that the block's keys, values, scores and probabilities mostly stay in the CPU's caches,
# large enough that the map takes few blocks (every block costs a few dozen operator calls).
BLOCK_ELEMENTS = 1 << 21


def chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    to_global: Optional[torch.Tensor],
    bias_index: torch.Tensor,
    window_outside: Optional[torch.Tensor],
    hw: Tuple[int, int],
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """
    Local rows of Vision Longformer attention: every query of a w x w chunk attends the global
    tokens and the real tokens of the 3 x 3 chunks around its own (in "exact" mode only those
    within its (2w + 1)^2 window), one softmax over both, with the relative-position bias.

    The forward and backward passes are the operators ``mvit_det::vil_chunk_attention`` and
    ``mvit_det::vil_chunk_attention_backward``, opaque to ``torch.compile``: its graphs call them
    as they are, so their partitioner cannot trade the recomputation for saved intermediates.

    Args:
        q: (B, H * W, C) local queries, before scaling.
        k: (B, G + H * W, C) keys of all tokens, globals first.
        v: (B, G + H * W, C) values of all tokens, globals first.
        table: ((4w - 1)^2, heads) relative-position bias table of local pairs.
        to_global: (heads, G) bias of local query -> global key, or None when G = 0.
        bias_index: (w^2, 9w^2) table index of (position in the chunk, key of the 3w x 3w region
            in raster order), as the attention module's ``bias_index``.
        window_outside: (w^2, 9w^2) bool, the pairs outside the exact window ("exact" mode), or
            None ("chunk" mode).
        hw: (H, W) of the local map.
        num_heads: attention heads.
        scale: logit scale.

    Returns:
        (B, H * W, C) attention outputs (before the output projection), in the dtype of ``q``.
    """
    return _chunk_attention_op(
        q, k, v, table, to_global, bias_index, window_outside, list(hw), num_heads, scale
    )


@torch.library.custom_op("mvit_det::vil_chunk_attention", mutates_args=())
def _chunk_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    to_global: Optional[torch.Tensor],
    bias_index: torch.Tensor,
    window_outside: Optional[torch.Tensor],
    hw: List[int],
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """The forward pass of :func:`chunk_attention` (same arguments, ``hw`` as a list)."""
    with torch.autocast(q.device.type, enabled=False):
        geo = _Geometry(q, k, hw, num_heads, bias_index, scale)
        qc = geo.query_chunks(q)  # (rows, BH, cols, w^2, 1 + d)
        kvp, kvg = geo.key_chunks(k, v)
        bias = geo.bias(table, to_global, bias_index, window_outside)
        ks, vs = slice(0, 1 + geo.d), slice(1 + geo.d, None)  # channels of kvp
        out = qc.new_empty(qc.shape[:-1] + (geo.d,))
        for blk in geo.blocks():
            kvc = geo.gather(kvp, kvg, blk)  # (n, m, cols, S, 1 + 2d)
            probs = geo.probabilities(qc[blk.chunks], kvc[..., ks], bias, blk)
            torch.matmul(probs, kvc[..., vs], out=out[blk.chunks])
        return geo.chunks_to_map(out, q.dtype)


@_chunk_attention_op.register_fake
def _chunk_attention_fake(q: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty_like(q)


@torch.library.custom_op("mvit_det::vil_chunk_attention_backward", mutates_args=())
def _chunk_attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    to_global: Optional[torch.Tensor],
    bias_index: torch.Tensor,
    window_outside: Optional[torch.Tensor],
    hw: List[int],
    num_heads: int,
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The backward pass of :func:`chunk_attention`: the gradients of q, k, v, table and to_global
    (an empty tensor when there are no global tokens) from that of the output.
    """
    with torch.autocast(q.device.type, enabled=False):
        geo = _Geometry(q, k, hw, num_heads, bias_index, scale)
        qc = geo.query_chunks(q)  # (rows, BH, cols, w^2, 1 + d)
        kvp, kvg = geo.key_chunks(k, v)
        bias = geo.bias(table, to_global, bias_index, window_outside)
        ks, vs = slice(0, 1 + geo.d), slice(1 + geo.d, None)  # channels of kvp
        grad_oc = geo.query_chunks(grad_out, query=False)  # (rows, BH, cols, w^2, d)
        grad_qc = torch.empty_like(qc)
        grad_kvp, grad_kvg = torch.zeros_like(kvp), torch.zeros_like(kvg)
        grad_bias = torch.zeros_like(bias)  # (heads, w^2, S)
        for blk in geo.blocks():
            kvc = geo.gather(kvp, kvg, blk)  # (n, m, cols, S, 1 + 2d)
            qb, grad_ob = qc[blk.chunks], grad_oc[blk.chunks]
            probs = geo.probabilities(qb, kvc[..., ks], bias, blk)  # (n, m, cols, w^2, S)
            grad_probs = torch.matmul(grad_ob, kvc[..., vs].transpose(-2, -1))
            # softmax backward: probs * (grad_probs - sum(probs * grad_probs))
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del grad_probs
            grad_bias.add_(grad_scores.unflatten(1, (blk.images, geo.nh)).sum((0, 1, 3)))
            torch.matmul(grad_scores, kvc[..., ks], out=grad_qc[blk.chunks])
            del kvc
            grad_k = torch.matmul(grad_scores.transpose(-2, -1), qb)  # (n, m, cols, S, 1 + d)
            del grad_scores
            grad_v = torch.matmul(probs.transpose(-2, -1), grad_ob)
            del probs
            # one tensor in the layout of kvp, so that k and v take one add per neighbour
            geo.scatter(torch.cat([grad_k, grad_v], dim=-1), grad_kvp, grad_kvg, blk)
        grad_qc.mul_(geo.scale)
        grad_q = geo.chunks_to_map(grad_qc[..., 1:], q.dtype)
        grad_k, grad_v = geo.key_grads(grad_kvp, grad_kvg, k.dtype)
        grad_table, grad_to_global = geo.bias_grads(grad_bias, table, to_global, bias_index)
    if grad_to_global is None:
        grad_to_global = table.new_empty(0)
    return grad_q, grad_k, grad_v, grad_table, grad_to_global


@_chunk_attention_backward_op.register_fake
def _chunk_attention_backward_fake(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    to_global: Optional[torch.Tensor],
    *args: object,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    glob = table.new_empty(0) if to_global is None else torch.empty_like(to_global)
    like = torch.empty_like
    return (
        like(q),
        like(k, memory_format=torch.contiguous_format),
        like(v, memory_format=torch.contiguous_format),
        like(table),
        glob,
    )


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    """Keeps the inputs, and nothing else, for the backward pass."""
    q, k, v, table, to_global, bias_index, window_outside, hw, num_heads, scale = inputs
    ctx.save_for_backward(q, k, v, table, to_global, bias_index, window_outside)
    ctx.geometry = (hw, num_heads, scale)


def _backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    q, k, v, table, to_global, bias_index, window_outside = ctx.saved_tensors
    grad_q, grad_k, grad_v, grad_table, grad_to_global = _chunk_attention_backward_op(
        grad_out, q, k, v, table, to_global, bias_index, window_outside, *ctx.geometry
    )
    grad_to_global = None if to_global is None else grad_to_global
    return grad_q, grad_k, grad_v, grad_table, grad_to_global, None, None, None, None, None


_chunk_attention_op.register_autograd(_backward, setup_context=_setup_context)


class _Block:
    """Chunk rows [r0, r1) of images [b0, b1): slices into the chunk layouts."""

    def __init__(self, r0: int, r1: int, b0: int, b1: int, heads: int) -> None:
        self.r0, self.r1, self.n, self.images = r0, r1, r1 - r0, b1 - b0
        self.m = self.images * heads  # extent on the B * heads axis
        self.heads = slice(b0 * heads, b1 * heads)
        self.chunks = (slice(r0, r1), self.heads)  # contiguous: one chunk row, or all images
        self.padded_rows = slice(r0, r1 + 2)  # of the padded layout: the rows' neighbourhoods


class _Geometry:
    """
    Sizes and layouts of one call, and the steps shared by the forward and backward passes.

    Chunk layout: (chunk rows, B * heads, chunk cols, w^2, channels), contiguous, so that a block
    of chunk rows of all images, or one chunk row of some images, is one contiguous slice. Keys
    and values share one tensor with channels [padding column, k, v] (1 + 2d), on the map padded
    by one chunk on every side ((rows + 2, B * heads, cols + 2, w^2, 1 + 2d), zero in the
    padding but for the padding column): the 3 x 3 neighbourhood of chunk (r, c) is padded chunks
    (r .. r + 2, c .. c + 2). The S keys of a neighbourhood are ordered [globals; neighbour (i, j)
    in raster order; position in the neighbour chunk in raster order].
    """

    def __init__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        hw: List[int],
        num_heads: int,
        bias_index: torch.Tensor,
        scale: float,
    ) -> None:
        (self.H, self.W), self.nh, self.scale = hw, num_heads, scale
        self.w = round(bias_index.shape[0] ** 0.5)
        self.B, self.L, C = q.shape
        self.G = k.shape[1] - self.L
        self.d = C // self.nh
        self.rows, self.cols = ceil_div(self.H, self.w), ceil_div(self.W, self.w)
        self.S = self.G + 9 * self.w * self.w
        self.device = q.device
        reduced = q.dtype in (torch.float16, torch.bfloat16)
        self.dtype = torch.float32 if reduced else q.dtype  # compute dtype

    # ---------------------------------------------------------------- layouts

    def _pieces(self, size: int) -> List[Tuple[int, int, int]]:
        """(first chunk, chunks, extent in the chunk) of the whole chunks and of the partial
        last chunk of an axis."""
        w, pieces = self.w, []
        if size // w:
            pieces.append((0, size // w, w))
        if size % w:
            pieces.append((size // w, 1, size % w))
        return pieces

    def _copy_map(
        self, chunks: torch.Tensor, tokens: torch.Tensor, offset: int, to_chunks: bool
    ) -> None:
        """
        Copies between a (B, H * W, heads * d) token map and a chunk-layout tensor with d
        channels whose chunk (r, c) holds map chunk (r - offset, c - offset), piece by piece
        (whole chunks, partial last chunks).
        """
        B, H, W, nh, d, w = self.B, self.H, self.W, self.nh, self.d, self.w
        grid = chunks.view(chunks.shape[0], B, nh, chunks.shape[2], w, w, d)
        shape = (B, H, W, nh, d)
        tokens = tokens.reshape(shape) if to_chunks else tokens.view(shape)  # written: a view
        for r0, nr, ur in self._pieces(H):
            for c0, nc, uc in self._pieces(W):
                src = tokens[:, r0 * w : r0 * w + nr * ur, c0 * w : c0 * w + nc * uc]
                # (B, nr, ur, nc, uc, nh, d) -> (nr, B, nh, nc, ur, uc, d)
                src = src.unflatten(1, (nr, ur)).unflatten(3, (nc, uc))
                src = src.permute(1, 0, 5, 3, 2, 4, 6)
                r, c = r0 + offset, c0 + offset
                dst = grid[r : r + nr, :, :, c : c + nc, :ur, :uc]
                if to_chunks:
                    dst.copy_(src)
                else:
                    src.copy_(dst)

    def query_chunks(self, x: torch.Tensor, query: bool = True) -> torch.Tensor:
        """
        (B, H * W, C) -> (rows, B * heads, cols, w^2, d) in the compute dtype, zero in the
        padding. Queries (``query``) are multiplied by the logit scale and get a first column of
        ones, the partner of the keys' padding column: (rows, B * heads, cols, w^2, 1 + d).
        """
        extra = int(query)
        shape = (self.rows, self.B * self.nh, self.cols, self.w * self.w, extra + self.d)
        whole = self.H % self.w == 0 and self.W % self.w == 0
        new = torch.empty if whole else torch.zeros
        chunks = new(shape, dtype=self.dtype, device=self.device)
        self._copy_map(chunks[..., extra:], x, 0, to_chunks=True)
        if query:
            chunks[..., 1:].mul_(self.scale)
            chunks[..., 0] = 1
        return chunks

    def chunks_to_map(self, chunks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(rows, B * heads, cols, w^2, d) -> (B, H * W, C), the padding cropped: the inverse of
        :meth:`query_chunks` without the first column and the scale."""
        tokens = torch.empty(self.B, self.L, self.nh * self.d, dtype=dtype, device=self.device)
        self._copy_map(chunks, tokens, 0, to_chunks=False)
        return tokens

    def key_chunks(self, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Keys and values of the local map in the padded chunk layout, (rows + 2, B * heads,
        cols + 2, w^2, 1 + 2d), and of the global tokens, (B * heads, G, 1 + 2d), in the compute
        dtype. Channels: [padding, k, v]; the padding column is 0 for real tokens and a large
        negative logit for the padding, so that the product with a query's column of ones
        removes the padding from the softmax without a mask.
        """
        G, BH, d = self.G, self.B * self.nh, self.d
        shape = (self.rows + 2, BH, self.cols + 2, self.w * self.w, 1 + 2 * d)
        padded = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._copy_map(padded[..., 1 : 1 + d], k[:, G:], 1, to_chunks=True)
        self._copy_map(padded[..., 1 + d :], v[:, G:], 1, to_chunks=True)
        outside = ~self._real_tokens()  # (rows + 2, cols + 2, w^2)
        padded[..., 0].masked_fill_(outside[:, None], -torch.finfo(self.dtype).max / 4)
        glob = torch.zeros(BH, G, 1 + 2 * d, dtype=self.dtype, device=self.device)
        # (B, G, heads, d) -> (B, heads, G, d); explicit sizes: an empty batch reshapes too
        for x, channels in ((k, slice(1, 1 + d)), (v, slice(1 + d, None))):
            glob[..., channels] = (
                x[:, :G].reshape(self.B, G, self.nh, d).transpose(1, 2).reshape(BH, G, d)
            )
        return padded, glob

    def _real_tokens(self) -> torch.Tensor:
        """(rows + 2, cols + 2, w^2) bool: which tokens of the padded chunk map are real."""
        w = self.w
        real = []
        for size, chunks in ((self.H, self.rows), (self.W, self.cols)):
            pos = torch.arange((chunks + 2) * w, device=self.device) - w
            real.append(((pos >= 0) & (pos < size)).view(chunks + 2, w))
        return (real[0][:, None, :, None] & real[1][None, :, None, :]).flatten(2)

    def key_grads(
        self, grad_padded: torch.Tensor, grad_glob: torch.Tensor, dtype: torch.dtype
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The gradients of k and v, (B, G + H * W, C) each, from those of :meth:`key_chunks`."""
        G, nh, d = self.G, self.nh, self.d
        grads = []
        for channels in (slice(1, 1 + d), slice(1 + d, None)):
            grad = torch.empty(self.B, G + self.L, nh * d, dtype=dtype, device=self.device)
            self._copy_map(grad_padded[..., channels], grad[:, G:], 1, to_chunks=False)
            if G:  # (B * heads, G, d) -> (B, G, heads, d)
                glob = grad_glob[..., channels].reshape(self.B, nh, G, d).transpose(1, 2)
                grad[:, :G] = glob.reshape(self.B, G, nh * d)
            grads.append(grad)
        return grads[0], grads[1]

    # ---------------------------------------------------------------- blocks

    def blocks(self) -> List[_Block]:
        """
        The blocks the map is processed in: runs of chunk rows of all images whose scores have
        at most :data:`BLOCK_ELEMENTS` elements, or, where one chunk row of all images has more,
        one chunk row of a run of images (at least one image).
        """
        B, nh = self.B, self.nh
        per_row = nh * self.cols * self.w * self.w * self.S  # scores of one image's chunk row
        if B * per_row <= BLOCK_ELEMENTS:
            step = max(BLOCK_ELEMENTS // max(B * per_row, 1), 1)
            return [
                _Block(r, min(r + step, self.rows), 0, B, nh) for r in range(0, self.rows, step)
            ]
        step = max(BLOCK_ELEMENTS // per_row, 1)
        return [
            _Block(r, r + 1, b, min(b + step, B), nh)
            for r in range(self.rows)
            for b in range(0, B, step)
        ]

    def gather(self, padded: torch.Tensor, glob: torch.Tensor, blk: _Block) -> torch.Tensor:
        """
        Keys and values of the neighbourhoods of a block: (n, m, cols, S, 1 + 2d) for its n
        chunk rows and m = images x heads, with S = G + 9w^2, globals first.
        """
        n, m, cols, G = blk.n, blk.m, self.cols, self.G
        out = padded.new_empty(n, m, cols, self.S, padded.shape[-1])
        # (n, m, cols, w^2, 2d, 3, 3): the windows of padded chunk rows r0 .. r1 + 2
        windows = padded[blk.padded_rows, blk.heads].unfold(0, 3, 1).unfold(2, 3, 1)
        local = out[:, :, :, G:].unflatten(3, (3, 3, self.w * self.w))
        local.copy_(windows.permute(0, 1, 2, 5, 6, 3, 4))
        if G:
            out[:, :, :, :G] = glob[None, blk.heads, None]
        return out

    def scatter(
        self, grad: torch.Tensor, grad_padded: torch.Tensor, grad_glob: torch.Tensor, blk: _Block
    ) -> None:
        """Adds the gradient of :meth:`gather`'s result onto the padded chunk map (9 strided
        adds, one per neighbour) and the global tokens."""
        cols, G = self.cols, self.G
        local = grad[:, :, :, G:].unflatten(3, (3, 3, self.w * self.w))
        target = grad_padded[:, blk.heads]
        for i in range(3):
            for j in range(3):
                target[blk.r0 + i : blk.r1 + i, :, j : j + cols].add_(local[:, :, :, i, j])
        if G:
            grad_glob[blk.heads].add_(grad[:, :, :, :G].sum((0, 2)))

    # ---------------------------------------------------------------- scores

    def _neighbour_order(self, pairs: torch.Tensor) -> torch.Tensor:
        """(w^2, 9w^2) per (query, key of the region in raster order) -> keys in neighbour
        order."""
        w = self.w
        # region key (i * w + u) * 3w + (j * w + v) -> (i * 3 + j) * w^2 + u * w + v
        return pairs.view(w * w, 3, w, 3, w).permute(0, 1, 3, 2, 4).reshape(w * w, 9 * w * w)

    def bias(
        self,
        table: torch.Tensor,
        to_global: Optional[torch.Tensor],
        bias_index: torch.Tensor,
        window_outside: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """(heads, w^2, S) logit bias of a chunk's queries in the key order of :meth:`gather`;
        -inf outside the exact window."""
        index = self._neighbour_order(bias_index)  # (w^2, 9w^2)
        bias = table.to(self.dtype)[index].permute(2, 0, 1)  # (heads, w^2, 9w^2)
        if window_outside is not None:
            bias = bias.masked_fill(self._neighbour_order(window_outside), float("-inf"))
        if not self.G:
            return bias.contiguous()
        glob = to_global.to(self.dtype)[:, None, :].expand(-1, self.w * self.w, -1)
        return torch.cat([glob, bias], dim=-1)

    def bias_grads(
        self,
        grad_bias: torch.Tensor,
        table: torch.Tensor,
        to_global: Optional[torch.Tensor],
        bias_index: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Gradients of the table and of the local -> global bias from that of :meth:`bias`
        (pairs outside the exact window have a zero gradient: their probability is 0)."""
        G = self.G
        index = self._neighbour_order(bias_index).reshape(-1)
        # (heads, w^2, 9w^2) -> (w^2 * 9w^2, heads)
        grad_local = grad_bias[:, :, G:].permute(1, 2, 0).reshape(-1, self.nh)
        grad_table = torch.zeros(table.shape, dtype=self.dtype, device=self.device)
        grad_table.index_add_(0, index, grad_local)
        grad_to_global = None
        if G:
            grad_to_global = grad_bias[:, :, :G].sum(1).to(to_global.dtype)
        return grad_table.to(table.dtype), grad_to_global

    def probabilities(
        self, qb: torch.Tensor, kc: torch.Tensor, bias: torch.Tensor, blk: _Block
    ) -> torch.Tensor:
        """
        Attention probabilities of a block.

        Args:
            qb: (n, m, cols, w^2, 1 + d) queries of the block (:meth:`query_chunks`).
            kc: (n, m, cols, S, 1 + d) their keys, with the padding column (:meth:`gather`).
            bias: (heads, w^2, S) from :meth:`bias`.
            blk: the block.

        Returns:
            (n, m, cols, w^2, S).
        """
        scores = torch.matmul(qb, kc.transpose(-2, -1))  # (n, m, cols, w^2, S)
        scores.view(blk.n, blk.images, self.nh, self.cols, *bias.shape[1:]).add_(bias[:, None])
        return torch.softmax(scores, dim=-1)
