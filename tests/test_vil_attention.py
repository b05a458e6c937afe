"""Vision Longformer attention against a dense oracle written from the attention rules.

The oracle is full (N x N) attention with a mask, built position by position from the rules in
docs/vil.md: local queries see every global token and the local keys of their chunk
neighbourhood ("chunk") or (2w + 1)^2 window ("exact"), clipped at the border; global queries
see every token; the logits get the table entry of the (query - key) offset, or the per-head
global constants. Every core (explicit, fused, recomputing, dense) must equal it in outputs and
gradients.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mvit_det.modeling.backbones.vil import LongformerAttention, recompute, resolve_vil_attn_impl
from mvit_det.modeling.backbones.vil.geometry import exact_window_outside, relative_bias_index

from helpers import assert_grads_close, relative_error

pytestmark = pytest.mark.numerics

# (H, W, w): a map with a partial last chunk in both directions, a map smaller than one chunk,
# a one-row map, and a map with a partial chunk in one direction only.
PADDED_CASES = [(10, 13, 3), (5, 5, 7), (1, 9, 2), (16, 11, 4)]
IMPLS = ["eager", "sdpa", "recompute", "dense"]


@functools.lru_cache(maxsize=None)
def oracle_geometry(H: int, W: int, w: int, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(HW, HW) allowed mask and table index of every (local query, local key) pair."""
    positions = [(r, c) for r in range(H) for c in range(W)]
    allowed = torch.zeros(H * W, H * W, dtype=torch.bool)
    index = torch.zeros(H * W, H * W, dtype=torch.long)
    for a, (qr, qc) in enumerate(positions):
        for b, (kr, kc) in enumerate(positions):
            dr, dc = qr - kr, qc - kc
            if mode == "exact":
                ok = abs(dr) <= w and abs(dc) <= w
            else:  # same chunk or one of the 8 chunks around it
                ok = abs(qr // w - kr // w) <= 1 and abs(qc // w - kc // w) <= 1
            if ok:
                allowed[a, b] = True
                index[a, b] = (dr + 2 * w - 1) * (4 * w - 1) + (dc + 2 * w - 1)
    return allowed, index


def oracle(attn: LongformerAttention, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Dense masked attention over all G + H * W tokens, from the rules."""
    B, N, C = x.shape
    G, nh, w = attn.num_global, attn.num_heads, attn.window
    H, W = hw
    L = H * W
    d = C // nh

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, nh, T, d)
        return t.reshape(B, -1, nh, d).transpose(1, 2)

    allowed, index = oracle_geometry(H, W, w, attn.window_mode)
    local_bias = attn.local_relative_position_bias_table[index].permute(2, 0, 1)  # (nh, L, L)
    local_bias = local_bias.masked_fill(~allowed, float("-inf"))
    k, v = attn.kv(x).chunk(2, dim=-1)
    if G:
        to_global = attn.g2l_relative_position_bias[1][:, None, :].expand(nh, L, G)
        local_bias = torch.cat([to_global, local_bias], dim=-1)  # (nh, L, N)
    logits = heads(attn.query(x[:, G:])) @ heads(k).transpose(-2, -1) * d**-0.5 + local_bias
    out_local = attn.proj((logits.softmax(-1) @ heads(v)).transpose(1, 2).reshape(B, L, C))
    if not G:
        return out_local
    if attn.share_global_weights:
        q_glob, k_glob, v_glob, proj = attn.query(x[:, :G]), k, v, attn.proj
    else:
        q_glob, proj = attn.query_global(x[:, :G]), attn.proj_global
        k_glob, v_glob = attn.kv_global(x).chunk(2, dim=-1)
    global_bias = torch.cat(
        [
            attn.g2g_relative_position_bias,
            attn.g2l_relative_position_bias[0][:, :, None].expand(nh, G, L),
        ],
        dim=-1,
    )
    logits = heads(q_glob) @ heads(k_glob).transpose(-2, -1) * d**-0.5 + global_bias
    out_global = proj((logits.softmax(-1) @ heads(v_glob)).transpose(1, 2).reshape(B, G, C))
    return torch.cat([out_global, out_local], dim=1)


def make_attention(
    G: int, w: int, mode: str, shared: bool, impl: str, dtype, dim: int = 12, heads: int = 3
) -> LongformerAttention:
    torch.manual_seed(0)
    attn = LongformerAttention(
        dim=dim,
        num_heads=heads,
        num_global=G,
        window=w,
        window_mode=mode,
        share_global_weights=shared,
        attn_impl=impl,
    ).to(dtype)
    with torch.no_grad():  # random biases of a visible size
        for name, p in attn.named_parameters():
            if "relative_position" in name:
                p.normal_(0, 1)
    return attn


def outputs_and_grads(attn, x, hw, fn=None) -> Tuple[torch.Tensor, dict]:
    x = x.detach().requires_grad_(True)
    out = attn(x, hw) if fn is None else fn(attn, x, hw)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = [n for n, _ in attn.named_parameters()]
    grads = torch.autograd.grad((out * weight).sum(), [x] + [p for _, p in attn.named_parameters()])
    return out.detach(), dict(zip(["input"] + names, grads))


def check_against_oracle(attn, x, hw, tol):
    expected, expected_grads = outputs_and_grads(attn, x, hw, oracle)
    actual, actual_grads = outputs_and_grads(attn, x, hw)
    assert relative_error(actual, expected) <= tol
    assert_grads_close(actual_grads, expected_grads, tol)
    with torch.no_grad():  # the fused core takes another route without gradients
        assert relative_error(attn(x, hw), expected) <= tol


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("G", [0, 1, 2])
@pytest.mark.parametrize("mode", ["chunk", "exact"])
@pytest.mark.parametrize("H,W,w", PADDED_CASES)
def test_equals_dense_oracle_fp64(H, W, w, mode, G, shared, impl):
    attn = make_attention(G, w, mode, shared, impl, torch.float64)
    x = torch.randn(2, G + H * W, 12, dtype=torch.float64)
    check_against_oracle(attn, x, (H, W), 1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["chunk", "exact"])
@pytest.mark.parametrize("H,W,w", PADDED_CASES + [(14, 14, 7)])
def test_equals_dense_oracle_fp32(H, W, w, mode, impl):
    attn = make_attention(1, w, mode, True, impl, torch.float32)
    x = torch.randn(2, 1 + H * W, 12)
    check_against_oracle(attn, x, (H, W), 1e-5)


@pytest.mark.parametrize("mode", ["chunk", "exact"])
def test_fused_core_with_a_frozen_bias_equals_oracle(mode):
    """With the bias tables frozen the fused core passes the bias as the SDPA mask while q, k
    and v still need gradients."""
    attn = make_attention(1, 3, mode, True, "sdpa", torch.float64)
    for name, p in attn.named_parameters():
        p.requires_grad_("relative_position" not in name)
    x = torch.randn(2, 1 + 10 * 13, 12, dtype=torch.float64, requires_grad=True)
    expected = oracle(attn, x, (10, 13))
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    actual = attn(x, (10, 13))
    (grad_actual,) = torch.autograd.grad(actual.sum(), x)
    assert relative_error(actual, expected) <= 1e-10
    assert relative_error(grad_actual, grad_expected) <= 1e-10


@pytest.mark.parametrize("mode", ["chunk", "exact"])
def test_fused_core_with_widths_padded_for_cuda_kernels(mode, monkeypatch):
    """On CUDA the extended q/k/v are zero-filled to a multiple of 8 columns; the same code
    path, forced here, gives the same results."""
    monkeypatch.setattr("mvit_det.modeling.fused_attention.kernel_width_multiple", lambda x: 8)
    attn = make_attention(2, 3, mode, True, "sdpa", torch.float64)
    x = torch.randn(2, 2 + 10 * 13, 12, dtype=torch.float64)
    check_against_oracle(attn, x, (10, 13), 1e-10)


def test_chunk_and_exact_modes_differ():
    """The published models attend chunk neighbourhoods (3w x 3w, shared by a chunk), not the
    (2w + 1)^2 window of each token: with the same weights the two modes give different
    results, and each equals only its own oracle."""
    chunk = make_attention(1, 3, "chunk", True, "sdpa", torch.float64)
    exact = make_attention(1, 3, "exact", True, "sdpa", torch.float64)
    exact.load_state_dict(chunk.state_dict())
    x = torch.randn(1, 1 + 12 * 12, 12, dtype=torch.float64)
    with torch.no_grad():
        out_chunk, out_exact = chunk(x, (12, 12)), exact(x, (12, 12))
        assert relative_error(out_chunk, out_exact) > 1e-2
        assert relative_error(out_chunk, oracle(chunk, x, (12, 12))) <= 1e-10
        assert relative_error(out_chunk, oracle(exact, x, (12, 12))) > 1e-2
    # In a map of one chunk both see every token.
    with torch.no_grad():
        y = x[:, : 1 + 9]
        assert relative_error(chunk(y, (3, 3)), exact(y, (3, 3))) <= 1e-12


def test_bias_index_and_window_follow_the_offsets():
    w = 3
    index = relative_bias_index(w)  # (w^2, 9w^2)
    assert index.shape == (9, 81)
    # query (1, 2) of the chunk, key (0, 4) of the region, which starts at (-w, -w): offset
    # (1 - (0 - 3), 2 - (4 - 3)) = (4, 1)
    q, k = 1 * w + 2, 0 * 3 * w + 4
    assert index[q, k] == (4 + 2 * w - 1) * (4 * w - 1) + (1 + 2 * w - 1)
    assert index.min() >= 0 and index.max() < (4 * w - 1) ** 2
    centre = (1 + w) * 3 * w + (2 + w)  # the query's own position in the region
    assert index[q, centre] == (2 * w - 1) * (4 * w - 1) + (2 * w - 1)
    outside = exact_window_outside(w)
    assert outside[q, k] and not outside[q, centre]  # |dr| = 4 > w
    # every query's (2w + 1)^2 window lies inside its chunk's 3w x 3w region
    assert ((~outside).sum(dim=1) == (2 * w + 1) ** 2).all()


def test_auto_picks_the_recomputing_core_for_bias_gradients_on_the_cpu():
    assert resolve_vil_attn_impl("auto", bias_needs_grad=False, on_cpu=True) == "sdpa"
    assert resolve_vil_attn_impl("auto", bias_needs_grad=True, on_cpu=False) == "sdpa"
    assert resolve_vil_attn_impl("auto", bias_needs_grad=True, on_cpu=True) == "recompute"
    assert resolve_vil_attn_impl("sdpa", bias_needs_grad=True, on_cpu=True) == "sdpa"
    assert resolve_vil_attn_impl("recompute", bias_needs_grad=False, on_cpu=False) == "recompute"


def test_auto_avoids_the_custom_function_under_tracing():
    """Tracers and exporters cannot record the recomputing core's autograd function: under
    tracing "auto" keeps the explicit core for bias gradients on the CPU."""
    choices = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        choices.append(resolve_vil_attn_impl("auto", bias_needs_grad=True, on_cpu=True))
        return x + 1

    torch.jit.trace(probe, torch.zeros(1), check_trace=False)
    assert choices == ["eager"]


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.shapes: List[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.shapes = t.numel(), self.shapes + [tuple(t.shape)]
        return out


@pytest.mark.parametrize("grad", [False, True])
def test_fused_core_builds_no_token_by_token_tensor(grad):
    """No tensor of the fused core, forward or backward, has (local tokens)^2 elements, while
    the dense formulation does (checked on a smaller map)."""
    attn = make_attention(1, 7, "chunk", True, "sdpa", torch.float32, dim=8, heads=1)
    H = W = 64
    x = torch.randn(1, 1 + H * W, 8, requires_grad=grad)
    with LargestTensor() as fused, torch.set_grad_enabled(grad):
        out = attn(x, (H, W))
        if grad:
            out.sum().backward()
    assert fused.largest < (H * W) ** 2 // 2, fused.shapes[-1]
    attn.attn_impl = "dense"
    with LargestTensor() as dense, torch.no_grad():
        attn(x[:, : 1 + 24 * 24], (24, 24))
    assert dense.largest >= (24 * 24) ** 2


# ---------------------------------------------------------------- the recomputing core


@pytest.mark.parametrize("budget", [1, 3 * 5 * 9 * 83 * 2, 3 * 5 * 9 * 83 * 3 * 2])
@pytest.mark.parametrize("mode", ["chunk", "exact"])
@pytest.mark.parametrize("G", [0, 2])
def test_recomputing_core_in_small_blocks_equals_oracle(budget, mode, G, monkeypatch):
    """The map is processed in blocks of chunk rows (of some or all images); blocks of one chunk
    row of one image, of one row of two of the three images, and of two rows of all images give
    the oracle's outputs and gradients."""
    monkeypatch.setattr(recompute, "BLOCK_ELEMENTS", budget)
    attn = make_attention(G, 3, mode, False, "recompute", torch.float64)
    x = torch.randn(3, G + 10 * 13, 12, dtype=torch.float64)
    check_against_oracle(attn, x, (10, 13), 1e-10)


@pytest.mark.parametrize("G", [0, 1])
def test_recomputing_core_with_an_empty_batch(G):
    attn = make_attention(G, 3, "chunk", True, "recompute", torch.float32)
    x = torch.randn(0, G + 10 * 13, 12, requires_grad=True)
    out = attn(x, (10, 13))
    out.sum().backward()
    assert out.shape == (0, G + 130, 12) and x.grad.shape == x.shape
    assert not attn.local_relative_position_bias_table.grad.any()


def saved_for_backward(fn) -> Tuple[int, int]:
    """Runs ``fn`` and returns the bytes of the distinct storages that autograd keeps for its
    backward pass and the number of elements of the largest tensor it keeps."""
    storages, largest = {}, [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()), largest[0]


@pytest.mark.parametrize("impl", ["recompute", "auto"])
def test_recomputing_core_keeps_no_neighbourhood_tensor(impl):
    """Between forward and backward the recomputing core (and "auto" when training on the CPU)
    keeps the layer's q, kv, projections and global rows only, no tensor of (local tokens x
    neighbourhood) elements, while the explicit core keeps far more; and no tensor of the
    forward or the backward pass has more than a block of such elements."""
    B, H, W, C, nh, w = 2, 56, 56, 24, 3, 7
    L, N = H * W, 1 + H * W
    neighbourhood = B * nh * L * 9 * w * w  # elements of the scores of all local queries
    torch.manual_seed(0)
    attn = LongformerAttention(dim=C, num_heads=nh, num_global=1, window=w, attn_impl=impl)
    x = torch.randn(B, N, C, requires_grad=True)
    outputs = []
    kept, largest = saved_for_backward(lambda: outputs.append(attn(x, (H, W))))
    # q and kv (2C) for the local rows; x, copies of the local tokens, the output before proj
    # and the global rows' copies of k and v for the other layers: 8.4 (B, N, C) float32 tensors
    assert kept <= 10 * B * N * C * 4, kept
    assert largest <= B * N * 2 * C
    with LargestTensor() as backward:
        outputs[0].sum().backward()
    assert backward.largest <= neighbourhood // 4, backward.shapes[-1]
    with LargestTensor() as forward:
        attn(x, (H, W))
    assert forward.largest <= neighbourhood // 4, forward.shapes[-1]
    attn.attn_impl = "eager"
    kept_explicit, _ = saved_for_backward(lambda: attn(x, (H, W)))
    assert kept_explicit >= neighbourhood * 4  # the probabilities alone


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["chunk", "exact"])
def test_recomputing_core_computes_low_precision_in_float32(dtype, mode):
    """With bf16/fp16 inputs (what autocast gives it) the recomputing core computes scores,
    softmax and gradients in float32: its outputs and the gradients of q and kv are the float32
    results of the same values, rounded once, and the table gradients are those results."""
    torch.manual_seed(0)
    B, H, W, nh, d, G, w = 2, 10, 13, 3, 4, 1, 3
    q = torch.randn(B, H * W, nh * d).to(dtype)
    kv = torch.randn(B, G + H * W, 2 * nh * d).to(dtype)
    grad_out = torch.randn(B, H * W, nh * d).to(dtype)
    table, to_global = torch.randn((4 * w - 1) ** 2, nh), torch.randn(nh, G)
    outside = exact_window_outside(w) if mode == "exact" else None
    results = []
    for cast in (lambda t: t.clone(), lambda t: t.float()):
        q_, kv_ = cast(q).requires_grad_(True), cast(kv).requires_grad_(True)
        tab, glob = table.clone().requires_grad_(True), to_global.clone().requires_grad_(True)
        out = recompute.chunk_attention(
            q_,
            *kv_.chunk(2, dim=-1),
            tab,
            glob,
            relative_bias_index(w),
            outside,
            (H, W),
            nh,
            d**-0.5,
        )
        out.backward(cast(grad_out))
        results.append((out, q_.grad, kv_.grad, tab.grad, glob.grad))
    low, high = results
    assert low[0].dtype == low[1].dtype == low[2].dtype == dtype
    for a, b in zip(low[:3], high[:3]):
        assert torch.equal(a, b.to(dtype))
    for a, b in zip(low[3:], high[3:]):
        assert torch.equal(a, b)
