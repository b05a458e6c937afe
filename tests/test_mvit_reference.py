"""The whole MViTv2 backbone against an fp64 reference written from the architecture rules.

The reference below is built from the rules of docs/architecture.md alone and shares no code with
the package: its block layout comes from its own reading of the layout rules (and is checked
against ``MViT.block_specs`` as plain numbers), it reads the model's weights as plain tensors, and
it computes every step itself: layer norms, pooling (one depthwise conv per head), max pooling
with -inf padding, window partition with zero padding of q, k and v (every padded query is
attended, then cropped: the published formulation), linear resizing of the relative-position
tables, relative-position indexes in exact rational arithmetic, the decomposed relative-position
terms as explicit einsums, softmax, and the bicubic resize of an absolute position table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

from mvit_det import MViT

from helpers import assert_grads_close, relative_error

pytestmark = pytest.mark.numerics

LN_EPS = 1e-6
PATCH_STRIDE = 4
Params = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Layout rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefBlock:
    """One block's structure as the reference derives it from the rules."""

    index: int
    stage: int
    dim: int
    dim_out: int
    num_heads: int
    stride_q: int
    stride_kv: int
    window: int  # in tokens of the block's input map; 0 for global attention
    input_size: int  # side of the block's input grid at the pretraining size
    drop_path: float


def reference_layout(
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    adaptive_window_size: int,
    adaptive_kv_stride: int,
    attention_mode: str = "hybrid",
    img_size: int = 224,
    drop_path_rate: float = 0.0,
) -> List[RefBlock]:
    """
    The block structure from closed-form rules: a block's stage is 2 plus the number of stage
    ends before it; the first block of stages 3-5 pools q by 2 and doubles channels and heads;
    the kv stride is ``adaptive_kv_stride / 2**(stage - 2)`` (at least 1), doubled in the last
    block of stages 3 and 4; window and pretraining grid halve once for every q-pooling block
    *before* the block (they are counted on the block's input map).

    Args:
        embed_dim: channels of stage 2.
        depth: number of blocks.
        num_heads: heads of stage 2.
        last_block_indexes: last block of each of the four stages.
        adaptive_window_size: window of stage 2 in tokens.
        adaptive_kv_stride: kv stride of stage 2.
        attention_mode: "hybrid", "global" or "window".
        img_size: pretraining image size.
        drop_path_rate: stochastic depth rate of the last block.

    Returns:
        one :class:`RefBlock` per block.
    """
    last = tuple(last_block_indexes)
    stage_starts = [i + 1 for i in last[:3]]
    blocks = []
    for i in range(depth):
        level = sum(1 for end in last if end < i)  # stage - 2
        first = i in stage_starts
        dim_out = embed_dim * 2**level
        pooled_before = sum(1 for s in stage_starts if s < i)
        if attention_mode == "global":
            is_global = True
        elif attention_mode == "window":
            is_global = False
        else:
            is_global = i in last[1:]
        blocks.append(
            RefBlock(
                index=i,
                stage=2 + level,
                dim=dim_out // 2 if first else dim_out,
                dim_out=dim_out,
                num_heads=num_heads * 2**level,
                stride_q=2 if first else 1,
                stride_kv=max(adaptive_kv_stride // 2**level, 1) * (2 if i in last[1:3] else 1),
                window=0 if is_global else adaptive_window_size // 2**pooled_before,
                input_size=(img_size // PATCH_STRIDE) // 2**pooled_before,
                drop_path=drop_path_rate * i / (depth - 1),
            )
        )
    return blocks


FIELDS = (
    "index",
    "stage",
    "dim",
    "dim_out",
    "num_heads",
    "stride_q",
    "stride_kv",
    "window",
    "input_size",
    "drop_path",
)


def layout_tuples(specs: Sequence) -> List[Tuple]:
    """Blocks (the model's ``BlockSpec`` or :class:`RefBlock`) as tuples of plain numbers."""
    return [
        tuple(round(v, 12) if isinstance(v, float) else v for v in (getattr(s, f) for f in FIELDS))
        for s in specs
    ]


# ---------------------------------------------------------------------------------------------
# Reference computation
# ---------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension with eps 1e-6 (biased variance)."""
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def linear(x: torch.Tensor, params: Params, name: str) -> torch.Tensor:
    return torch.einsum("...i,oi->...o", x, params[f"{name}.weight"]) + params[f"{name}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """Max pooling with kernel 3, stride 2, padding 1 (padding never wins) on (B, H, W, C)."""
    B, H, W, C = x.shape
    Ho, Wo = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    padded = F.pad(x, (0, 0, 1, 1, 1, 1), value=float("-inf"))  # (B, H + 2, W + 2, C)
    windows = [
        padded[:, di : di + 2 * (Ho - 1) + 1 : 2, dj : dj + 2 * (Wo - 1) + 1 : 2]
        for di in range(3)
        for dj in range(3)
    ]
    return torch.stack(windows).amax(0)  # (B, Ho, Wo, C)


def pool_heads(t: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """
    Per-head pooling: one depthwise conv (kernel 3, padding 1, no bias) applied to each head.

    Args:
        t: (B, nh, H, W, d) tokens.
        weight: (d, 1, 3, 3) pooling kernel shared by the heads.
        stride: pooling stride.

    Returns:
        (B, nh, ceil(H / stride), ceil(W / stride), d).
    """
    outs = []
    for h in range(t.shape[1]):
        head = t[:, h].permute(0, 3, 1, 2)  # (B, d, H, W)
        pooled = F.conv2d(head, weight, None, stride=stride, padding=1, groups=head.shape[1])
        outs.append(pooled.permute(0, 2, 3, 1))  # (B, H', W', d)
    return torch.stack(outs, 1)


def resize_linear(table: torch.Tensor, length: int) -> torch.Tensor:
    """
    Linear resize of an (L, d) table to ``length`` entries, half-pixel centres: entry o samples
    position ``(o + 1/2) * L / length - 1/2`` (clamped at 0), between its two neighbours.
    """
    size = table.shape[0]
    if size == length:
        return table
    rows = []
    for o in range(length):
        src = max((o + 0.5) * size / length - 0.5, 0.0)
        lo = int(math.floor(src))
        hi = min(lo + 1, size - 1)
        frac = src - lo
        rows.append(table[lo] * (1.0 - frac) + table[hi] * frac)
    return torch.stack(rows)


def rel_pos_lookup(q_len: int, k_len: int, table: torch.Tensor) -> torch.Tensor:
    """
    (q_len, k_len, d) embeddings: the table resized to ``2 * max(q_len, k_len) - 1`` entries and
    indexed by ``i * max(k/q, 1) - j * max(q/k, 1) + (k_len - 1) * max(q/k, 1)`` (exactly).
    """
    resized = resize_linear(table, 2 * max(q_len, k_len) - 1)
    index = exact_index(q_len, k_len)
    assert index.min() >= 0 and index.max() < resized.shape[0]
    return resized[index]


def exact_index(q_len: int, k_len: int) -> torch.Tensor:
    """(q_len, k_len) table index of every pair along one axis, in exact rational arithmetic."""
    q_scale = max(Fraction(k_len, q_len), Fraction(1))
    k_scale = max(Fraction(q_len, k_len), Fraction(1))
    return torch.tensor(
        [
            [math.floor(i * q_scale - j * k_scale + (k_len - 1) * k_scale) for j in range(k_len)]
            for i in range(q_len)
        ]
    )


def attention_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_tables: Optional[Tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """
    softmax((q * d^-1/2) k^T + rel) v on grids.

    Args:
        q: (N, nh, qh, qw, d) queries.
        k, v: (N, nh, kh, kw, d) keys and values.
        rel_tables: the (rel_pos_h, rel_pos_w) learned tables, or None.

    Returns:
        (N, nh, qh, qw, d).
    """
    N, nh, qh, qw, d = q.shape
    kh, kw = k.shape[2:4]
    logits = torch.einsum("nzijc,nzmlc->nzijml", q * d**-0.5, k)  # (N, nh, qh, qw, kh, kw)
    if rel_tables is not None:
        table_h = rel_pos_lookup(qh, kh, rel_tables[0])  # (qh, kh, d)
        table_w = rel_pos_lookup(qw, kw, rel_tables[1])  # (qw, kw, d)
        rel_h = torch.einsum("nzijc,imc->nzijm", q, table_h)  # key row m
        rel_w = torch.einsum("nzijc,jlc->nzijl", q, table_w)  # key column l
        logits = logits + rel_h[..., :, None] + rel_w[..., None, :]
    logits = logits.reshape(N, nh, qh, qw, kh * kw)
    weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    weights = (weights / weights.sum(-1, keepdim=True)).reshape(N, nh, qh, qw, kh, kw)
    return torch.einsum("nzijml,nzmlc->nzijc", weights, v)


def to_windows(t: torch.Tensor, win: int) -> Tuple[torch.Tensor, int, int]:
    """(B, nh, H, W, d) -> (B * rows * cols, nh, win, win, d), zero-padded at the bottom/right."""
    B, nh, H, W, d = t.shape
    rows, cols = -(-H // win), -(-W // win)
    t = torch.cat([t, t.new_zeros(B, nh, rows * win - H, W, d)], 2)
    t = torch.cat([t, t.new_zeros(B, nh, rows * win, cols * win - W, d)], 3)
    t = t.reshape(B, nh, rows, win, cols, win, d).permute(0, 2, 4, 1, 3, 5, 6)
    return t.reshape(B * rows * cols, nh, win, win, d), rows, cols


def from_windows(t: torch.Tensor, B: int, rows: int, cols: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`to_windows`, cropped to (B, nh, H, W, d)."""
    _, nh, win, _, d = t.shape
    t = t.reshape(B, rows, cols, nh, win, win, d).permute(0, 3, 1, 4, 2, 5, 6)
    return t.reshape(B, nh, rows * win, cols * win, d)[:, :, :H, :W]


def reference_attention(
    params: Params,
    prefix: str,
    spec: RefBlock,
    x: torch.Tensor,
    use_rel_pos: bool,
    residual_pooling: bool,
) -> torch.Tensor:
    """Pooling attention of one block on normalised tokens (B, H, W, dim) -> (B, H', W', dim_out)."""
    B, H, W, _ = x.shape
    nh, d = spec.num_heads, spec.dim_out // spec.num_heads
    qkv = linear(x, params, prefix + "qkv")  # (B, H, W, 3 * dim_out): [q | k | v], heads inside
    pooled = []
    for part, name, stride in zip(
        qkv.split(spec.dim_out, -1), "qkv", (spec.stride_q, spec.stride_kv, spec.stride_kv)
    ):
        heads = part.reshape(B, H, W, nh, d).permute(0, 3, 1, 2, 4)  # (B, nh, H, W, d)
        heads = pool_heads(heads, params[f"{prefix}pool_{name}.weight"], stride)
        pooled.append(
            layer_norm(
                heads, params[f"{prefix}norm_{name}.weight"], params[f"{prefix}norm_{name}.bias"]
            )
        )
    q, k, v = pooled
    tables = (params[prefix + "rel_pos_h"], params[prefix + "rel_pos_w"]) if use_rel_pos else None
    Hq, Wq = q.shape[2:4]
    if spec.window == 0:
        out = attention_core(q, k, v, tables)
    else:
        q_win, rows, cols = to_windows(q, spec.window // spec.stride_q)
        k_win, k_rows, k_cols = to_windows(k, spec.window // spec.stride_kv)
        v_win, _, _ = to_windows(v, spec.window // spec.stride_kv)
        assert (rows, cols) == (k_rows, k_cols)
        out = from_windows(attention_core(q_win, k_win, v_win, tables), B, rows, cols, Hq, Wq)
    if residual_pooling:
        out = out + q
    out = out.permute(0, 2, 3, 1, 4).reshape(B, Hq, Wq, nh * d)  # heads back in channel order
    return linear(out, params, prefix + "proj")


def reference_block(
    params: Params, spec: RefBlock, x: torch.Tensor, use_rel_pos: bool, residual_pooling: bool
) -> torch.Tensor:
    """One pre-norm block on (B, H, W, dim) tokens."""
    p = f"blocks.{spec.index}."
    x_norm = layer_norm(x, params[p + "norm1.weight"], params[p + "norm1.bias"])
    attn = reference_attention(params, p + "attn.", spec, x_norm, use_rel_pos, residual_pooling)
    skip = linear(x_norm, params, p + "proj") if spec.dim != spec.dim_out else x
    if spec.stride_q > 1:
        skip = max_pool_3x3_s2(skip)
    x = skip + attn
    hidden = gelu(
        linear(
            layer_norm(x, params[p + "norm2.weight"], params[p + "norm2.bias"]),
            params,
            p + "mlp.fc1",
        )
    )
    return x + linear(hidden, params, p + "mlp.fc2")


def bicubic_matrix(size_in: int, size_out: int, dtype: torch.dtype) -> torch.Tensor:
    """(size_out, size_in) bicubic resampling (A = -0.75, half-pixel centres, border clamped)."""
    A = -0.75

    def cubic(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (A + 2) * t**3 - (A + 3) * t**2 + 1
        if t < 2:
            return A * t**3 - 5 * A * t**2 + 8 * A * t - 4 * A
        return 0.0

    matrix = torch.zeros(size_out, size_in, dtype=dtype)
    for o in range(size_out):
        src = (o + 0.5) * size_in / size_out - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            matrix[o, min(max(tap, 0), size_in - 1)] += cubic(src - tap)
    return matrix


def reference_abs_pos(table: torch.Tensor, has_cls: bool, hw: Tuple[int, int]) -> torch.Tensor:
    """(1, [1 +] S*S, C) table -> (1, H, W, C): class slot dropped, grid resized bicubically."""
    grid = table[0, 1:] if has_cls else table[0]
    side = math.isqrt(grid.shape[0])
    grid = grid.reshape(side, side, -1)
    if (side, side) == tuple(hw):
        return grid[None]
    rows = bicubic_matrix(side, hw[0], grid.dtype)
    cols = bicubic_matrix(side, hw[1], grid.dtype)
    return torch.einsum("hi,wj,ijc->hwc", rows, cols, grid)[None]


def reference_backbone(
    params: Params,
    layout: List[RefBlock],
    last_block_indexes: Sequence[int],
    x: torch.Tensor,
    use_rel_pos: bool = True,
    residual_pooling: bool = True,
    has_cls: bool = True,
) -> Dict[str, torch.Tensor]:
    """
    The backbone from the rules.

    Args:
        params: the weights by their (Detectron2) names.
        layout: blocks from :func:`reference_layout`.
        last_block_indexes: last block of each stage.
        x: (B, 3, H, W) images.
        use_rel_pos: add the decomposed relative-position terms.
        residual_pooling: add the pooled q to the attention output.
        has_cls: the absolute position table (if any) starts with a class-token slot.

    Returns:
        "scale2".."scale5" -> (B, C_n, ceil(H / 2**n), ceil(W / 2**n)).
    """
    x = F.conv2d(x, params["patch_embed.proj.weight"], params["patch_embed.proj.bias"], 4, 3)
    x = x.permute(0, 2, 3, 1)  # (B, H/4, W/4, C)
    if "pos_embed" in params:
        x = x + reference_abs_pos(params["pos_embed"], has_cls, tuple(x.shape[1:3]))
    outputs = {}
    for spec in layout:
        x = reference_block(params, spec, x, use_rel_pos, residual_pooling)
        if spec.index in last_block_indexes:
            name = f"scale{spec.stage}"
            norm = layer_norm(x, params[f"{name}_norm.weight"], params[f"{name}_norm.bias"])
            outputs[name] = norm.permute(0, 3, 1, 2)
    return outputs


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

# Two heads (per-head pooling and channel order matter), windows of 16 tokens that cut the maps
# of the test images, a global block in stages 3-5 and every stage transition.
TINY = dict(
    embed_dim=16,
    depth=5,
    num_heads=2,
    last_block_indexes=(0, 2, 3, 4),
    adaptive_window_size=16,
    adaptive_kv_stride=4,
)
LAYOUT_KEYS = (
    "embed_dim",
    "depth",
    "num_heads",
    "last_block_indexes",
    "adaptive_window_size",
    "adaptive_kv_stride",
    "attention_mode",
    "drop_path_rate",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread runs them as fast as two, and threads that wait
    for each other on a busy machine make the module many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed_model(**overrides) -> MViT:
    """A tiny fp64 MViT with every parameter randomly perturbed away from its initialisation
    (norm affines, biases and relative-position tables all nonzero and distinct)."""
    torch.manual_seed(0)
    model = MViT(**{**TINY, "rel_pos_zero_init": False, **overrides}).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if "rel_pos" in name or name == "pos_embed":
                p.copy_(0.3 * noise)
            elif p.dim() == 1:  # LayerNorm affines and biases
                p.add_(0.2 * noise)
            else:
                p.add_(0.05 * noise)
    return model


def layout_of(kwargs: dict) -> List[RefBlock]:
    """The reference layout of ``MViT(**TINY, **kwargs)``."""
    merged = {**TINY, **kwargs}
    return reference_layout(**{k: merged[k] for k in LAYOUT_KEYS if k in merged})


def check_against_reference(
    model: MViT, x: torch.Tensor, reference_kwargs: dict, model_kwargs: dict
) -> None:
    """
    Outputs, input gradients and parameter gradients of ``model`` equal the reference's.

    Args:
        model: ``perturbed_model(**model_kwargs)``.
        x: (B, 3, H, W) fp64 images.
        reference_kwargs: keyword arguments of :func:`reference_backbone`.
        model_kwargs: the overrides of TINY the model was built with.
    """
    layout = layout_of(model_kwargs)
    merged = {**TINY, **model_kwargs}
    last = merged["last_block_indexes"]
    assert layout_tuples(layout) == layout_tuples(model.block_specs)
    # The model's weights as plain tensors, each a leaf of the reference's own graph.
    params = {n: t.detach().clone().requires_grad_(True) for n, t in model.state_dict().items()}
    x_model = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    out = model(x_model)
    expected = reference_backbone(params, layout, last, x_ref, **reference_kwargs)
    assert list(out) == list(expected) == ["scale2", "scale3", "scale4", "scale5"]
    for n, name in enumerate(expected, start=2):
        shape = (x.shape[0], merged["embed_dim"] * 2 ** (n - 2))
        shape += (math.ceil(x.shape[2] / 2**n), math.ceil(x.shape[3] / 2**n))
        assert tuple(out[name].shape) == tuple(expected[name].shape) == shape, name
        assert relative_error(out[name], expected[name]) <= 1e-10, name

    generator = torch.Generator().manual_seed(2)
    weights = {n: torch.randn(f.shape, generator=generator, dtype=f.dtype) for n, f in out.items()}
    names = [n for n, p in model.named_parameters()]
    grads = torch.autograd.grad(
        sum((out[n] * w).sum() for n, w in weights.items()),
        [x_model] + [p for _, p in model.named_parameters()],
    )
    grads_ref = torch.autograd.grad(
        sum((expected[n] * w).sum() for n, w in weights.items()),
        [x_ref] + [params[n] for n in names],
    )
    assert relative_error(grads[0], grads_ref[0]) <= 1e-10
    assert_grads_close(dict(zip(names, grads[1:])), dict(zip(names, grads_ref[1:])), 1e-10)
    with torch.no_grad():  # the inference path equals too
        for name, feature in model(x).items():
            assert relative_error(feature, expected[name].detach()) <= 1e-10, name


LAYOUT_CASES = [
    dict(attention_mode="hybrid"),
    dict(attention_mode="global"),
    dict(attention_mode="window"),
    dict(attention_mode="window", adaptive_window_size=8, num_heads=1),
    dict(adaptive_kv_stride=2, adaptive_window_size=32, drop_path_rate=0.3),
    dict(depth=8, last_block_indexes=(1, 3, 6, 7), drop_path_rate=0.2, attention_mode="window"),
    # the published sizes (docs/architecture.md)
    dict(
        embed_dim=96,
        depth=10,
        num_heads=1,
        last_block_indexes=(0, 2, 7, 9),
        drop_path_rate=0.2,
        adaptive_window_size=56,
    ),
    dict(
        embed_dim=96,
        depth=24,
        num_heads=1,
        last_block_indexes=(1, 4, 20, 23),
        drop_path_rate=0.4,
        adaptive_window_size=56,
    ),
    dict(
        embed_dim=144,
        depth=48,
        num_heads=2,
        last_block_indexes=(1, 7, 43, 47),
        drop_path_rate=0.5,
        adaptive_window_size=56,
    ),
    dict(
        embed_dim=192,
        depth=80,
        num_heads=3,
        last_block_indexes=(3, 11, 71, 79),
        drop_path_rate=0.6,
        adaptive_window_size=56,
    ),
]


@pytest.mark.parametrize("kwargs", LAYOUT_CASES)
def test_block_specs_equal_the_layout_rules(kwargs):
    with torch.device("meta"):
        model = MViT(**{**TINY, **kwargs})
    assert layout_tuples(model.block_specs) == layout_tuples(layout_of(kwargs))
    # the layout reaches the modules: heads, strides and windows of every block
    for spec, block in zip(layout_of(kwargs), model.blocks):
        attn = block.attn
        assert attn.num_heads == spec.num_heads
        assert attn.qkv.in_features == spec.dim and attn.qkv.out_features == 3 * spec.dim_out
        assert attn.pool_q.stride == (spec.stride_q,) * 2
        assert attn.pool_k.stride == attn.pool_v.stride == (spec.stride_kv,) * 2
        assert attn.window_size == spec.window
        length = 2 * max(spec.input_size // spec.stride_q, spec.input_size // spec.stride_kv) - 1
        assert tuple(attn.rel_pos_h.shape) == (length, spec.dim_out // spec.num_heads)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (75, 101)])
def test_hybrid_backbone_equals_reference(attn_impl, hw):
    model = perturbed_model(attn_impl=attn_impl)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    check_against_reference(model, x, {}, {})


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(attention_mode="global"),
        dict(attention_mode="window"),
        dict(attention_mode="window", adaptive_window_size=8, num_heads=1),
    ],
)
def test_attention_modes_equal_reference(attn_impl, kwargs):
    model = perturbed_model(attn_impl=attn_impl, **kwargs)
    x = torch.randn(2, 3, 75, 101, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    check_against_reference(model, x, {}, kwargs)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "kwargs, reference_kwargs, hw",
    [
        (dict(residual_pooling=False), dict(residual_pooling=False), (96, 160)),
        (dict(use_rel_pos=False), dict(use_rel_pos=False), (75, 101)),
        # MViTv1 style: absolute positions of a 64-pixel pretraining grid with a class slot,
        # resized bicubically (96x160) or used as they are (64x64)
        (
            dict(use_abs_pos=True, pretrain_img_size=64, residual_pooling=False),
            dict(residual_pooling=False),
            (96, 160),
        ),
        (dict(use_abs_pos=True, pretrain_img_size=64), {}, (64, 64)),
        (
            dict(use_abs_pos=True, pretrain_img_size=48, pretrain_use_cls_token=False),
            dict(has_cls=False),
            (75, 101),
        ),
    ],
)
def test_variants_equal_reference(attn_impl, kwargs, reference_kwargs, hw):
    model = perturbed_model(attn_impl=attn_impl, **kwargs)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    check_against_reference(model, x, reference_kwargs, kwargs)


def test_rel_pos_index_is_exact_where_lengths_divide():
    """The relative-position index along an axis, read through a table whose entries are their
    own index, equals the exact one wherever the q and k lengths divide each other (every pair
    of an input whose sides are multiples of 32); elsewhere it is computed in float32 and
    truncated, as in Detectron2's implementation, and can be one less (q 8, k 6)."""
    from mvit_det.modeling.backbones.mvit.geometry import relative_position_table

    def index(q_len: int, k_len: int) -> torch.Tensor:
        table = torch.arange(2 * max(q_len, k_len) - 1, dtype=torch.float64)[:, None]
        return relative_position_table(q_len, k_len, table)[..., 0].long()

    for q_len in range(1, 65):
        for k_len in range(1, 65):
            if q_len % k_len == 0 or k_len % q_len == 0:
                assert torch.equal(index(q_len, k_len), exact_index(q_len, k_len)), (q_len, k_len)
    difference = exact_index(8, 6) - index(8, 6)
    assert difference.min() == 0 and difference.max() == 1


@pytest.mark.parametrize("hw", [(64, 96), (160, 224)])
def test_rel_pos_lengths_divide_for_sides_that_are_multiples_of_32(hw, monkeypatch):
    """Every block of the MViTv2-T detector backbone (hybrid windows, pooled q and kv) looks up
    relative positions only for q and k lengths that divide each other when the input sides are
    multiples of 32: there the float32 index above is exact."""
    from mvit_det import mvit_preset
    from mvit_det.modeling.backbones.mvit import attention, geometry

    pairs = []

    def recording(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        pairs.append((q_size, k_size))
        return geometry.relative_position_table(q_size, k_size, rel_pos)

    monkeypatch.setattr(attention, "relative_position_table", recording)
    model = MViT(**mvit_preset("T"), residual_pooling=True)  # windows of 56, relative positions
    with torch.no_grad():
        model(torch.zeros(1, 3, *hw))
    assert len(pairs) == 2 * len(model.blocks)
    assert all(q % k == 0 or k % q == 0 for q, k in pairs), sorted(set(pairs))
