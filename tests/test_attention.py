"""The fused (SDPA) attention core against the explicit one, and torch.compile support."""

from __future__ import annotations

import pytest
import torch

from mvit_det import MViT
from mvit_det.modeling.backbones.mvit import MultiScaleAttention, resolve_attn_impl
from mvit_det.modeling.backbones.mvit.cores import eager_attention
from mvit_det.modeling.backbones.mvit.geometry import (
    window_bands,
    window_partition,
    window_unpartition,
)

from helpers import (
    TINY_MVIT,
    assert_each_gradient_as_accurate,
    assert_grads_close,
    forward_backward,
    gradient_errors,
    normwise_error,
    relative_error,
)

pytestmark = pytest.mark.numerics


def pair(**overrides) -> tuple[MViT, MViT]:
    torch.manual_seed(0)
    eager = MViT(**TINY_MVIT, rel_pos_zero_init=False, attn_impl="eager", **overrides)
    sdpa = MViT(**TINY_MVIT, rel_pos_zero_init=False, attn_impl="sdpa", **overrides)
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa


def test_auto_picks_the_fused_core():
    assert resolve_attn_impl("auto") == "sdpa"
    assert resolve_attn_impl("eager") == "eager"


def test_window_bands_split_whole_and_cut_windows():
    assert window_bands(128, 56) == [
        (slice(0, 112), 56, slice(0, 2)),
        (slice(112, 128), 16, slice(2, 3)),
    ]
    assert window_bands(112, 56) == [(slice(0, 112), 56, slice(0, 2))]
    assert window_bands(10, 56) == [(slice(0, 10), 10, slice(0, 1))]


def padded_window_attention(attn: MultiScaleAttention, x: torch.Tensor) -> torch.Tensor:
    """The published formulation: q, k and v all zero-padded to whole windows, every padded query
    attended, the padding cropped afterwards."""
    nh = attn.num_heads
    pooled = []
    for part, pool, norm in zip(
        attn.qkv(x).chunk(3, dim=-1),
        (attn.pool_q, attn.pool_k, attn.pool_v),
        (attn.norm_q, attn.norm_k, attn.norm_v),
    ):
        # (B, H, W, nh * d) -> (B, nh * d, H, W) -> per-head pooling -> (B, H', W', nh, d)
        heads = part.unflatten(-1, (nh, -1)).permute(0, 3, 4, 1, 2).flatten(0, 1)
        heads = pool(heads).unflatten(0, (x.shape[0], nh)).permute(0, 3, 4, 1, 2)
        pooled.append(norm(heads))
    q, k, v = pooled
    q_win, q_hw = window_partition(q, attn.q_window)
    k_win, k_hw = window_partition(k, attn.kv_window)
    v_win, _ = window_partition(v, attn.kv_window)
    tables = attn._rel_pos_tables(q_hw, k_hw, q.dtype)
    out = eager_attention(q_win, k_win, v_win, q_hw, tables, attn.scale)
    out = window_unpartition(out, attn.q_window, q.shape[1:3]) + q
    return attn.proj(out.flatten(-2))


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("stride_q", [1, 2])
@pytest.mark.parametrize("hw", [(13, 19), (8, 8), (5, 6)])
def test_cut_border_windows_equal_padded_windows(attn_impl, stride_q, hw):
    # Queries of windows cut by the map border are attended without padding rows/columns of
    # queries; the real queries' outputs must equal those of the fully padded formulation.
    torch.manual_seed(0)
    attn = MultiScaleAttention(
        8,
        16,
        num_heads=2,
        stride_q=stride_q,
        stride_kv=2,
        window_size=8,
        use_rel_pos=True,
        rel_pos_zero_init=False,
        input_size=8,
        attn_impl=attn_impl,
    )
    x = torch.randn(2, *hw, 8)
    expected = padded_window_attention(attn, x)
    actual = attn(x)
    assert actual.shape == expected.shape == (2, -(-hw[0] // stride_q), -(-hw[1] // stride_q), 16)
    assert relative_error(actual, expected) <= 1e-6


def test_window_not_divisible_by_strides_is_rejected():
    with pytest.raises(
        ValueError, match="window_size=6 is not divisible by stride_q=1 and stride_kv=4"
    ):
        MultiScaleAttention(8, 8, num_heads=1, stride_kv=4, window_size=6)


@pytest.mark.parametrize("mode", ["hybrid", "global", "window"])
@pytest.mark.parametrize("hw", [(96, 128), (75, 101)])
def test_fused_equals_eager_fp32_outputs_and_gradients(mode, hw):
    eager, sdpa = pair(attention_mode=mode, adaptive_window_size=16)
    x = torch.randn(2, 3, *hw)
    out_e, grad_e = forward_backward(eager, x)
    out_s, grad_s = forward_backward(sdpa, x)
    for name in out_e:
        assert relative_error(out_s[name], out_e[name]) <= 1e-5, name
    assert_grads_close(grad_s, grad_e, 1e-5)


def test_fused_equals_eager_without_rel_pos_and_residual_pooling():
    # MViTv1-style: absolute positions, no rel-pos, no residual pooling.
    eager, sdpa = pair(use_rel_pos=False, residual_pooling=False, use_abs_pos=True)
    x = torch.randn(1, 3, 64, 96)
    out_e, grad_e = forward_backward(eager, x)
    out_s, grad_s = forward_backward(sdpa, x)
    for name in out_e:
        assert relative_error(out_s[name], out_e[name]) <= 1e-5
    assert not any("rel_pos" in name for name, _ in sdpa.named_parameters())


def smooth_skip_pooling(*models: MViT) -> None:
    """Replaces the max pooling of the skip paths by average pooling (same window)."""
    for model in models:
        for block in model.blocks:
            if block.pool_skip is not None:
                block.pool_skip = torch.nn.AvgPool2d(3, 2, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_is_as_accurate_as_eager_under_autocast(dtype):
    """Under autocast both cores round. Measured against the fp32 result, the fused core must be
    about as accurate as the explicit one: per output and over all gradients together (1.5x),
    and for every parameter's gradient against the explicit core's error for that same
    parameter (3x, or one eps of the dtype relative to that parameter's gradient norm).

    The per-parameter comparison uses average instead of max pooling on the skip paths. When
    rounding reorders near-equal inputs of a max pool, that position's whole gradient goes to
    another input: an error of the max pool, not of the cores, which in fp16 is five times the
    cores' rounding error (median gradient error ~1e-2 against ~2e-3) and varies with the input
    and the CPU's kernels. With average pooling, over 8 inputs, bf16 and fp16, both CPU
    capabilities and 1 or 2 threads, the largest fused/explicit ratio above the floor was 2.4
    and the explicit errors 0.4-14 eps. A fused core that drops a relative-position term fails
    (error 1 for its table), as does one that rounds its rel_h terms to float8 e4m3 under fp16
    (11x the explicit error of rel_pos_h). Under bf16 only float8 e5m2 reaches the bound
    (3.2x): one extra rounding at most 16x coarser than the dtype stays within the explicit
    core's own accumulated error."""
    eager, sdpa = pair()
    x = torch.randn(2, 3, 96, 128)
    out_ref, grad_ref = forward_backward(eager, x)
    with torch.autocast("cpu", dtype=dtype):
        out_e, grad_e = forward_backward(eager, x)
        out_s, grad_s = forward_backward(sdpa, x)
    assert all(out_s[n].dtype == out_e[n].dtype == dtype for n in out_s)
    for name, ref in out_ref.items():
        assert normwise_error(out_s[name], ref) <= 1.5 * normwise_error(out_e[name], ref), name

    def flat(grads: dict) -> torch.Tensor:
        return torch.cat([grads[n].flatten() for n in grad_ref])

    assert normwise_error(flat(grad_s), flat(grad_ref)) <= 1.5 * normwise_error(
        flat(grad_e), flat(grad_ref)
    )

    smooth_skip_pooling(eager, sdpa)
    _, grad_ref = forward_backward(eager, x)
    with torch.autocast("cpu", dtype=dtype):
        _, grad_e = forward_backward(eager, x)
        _, grad_s = forward_backward(sdpa, x)
    fused, explicit = gradient_errors(grad_s, grad_ref), gradient_errors(grad_e, grad_ref)
    # Every relative-position table takes part. Block 0's falls below the RMS cut of
    # gradient_errors (this image uses few of its 111 entries), but its gradient is no rounding
    # noise: both cores get it within 2-3 eps.
    for name in [n for n in grad_ref if "rel_pos" in n]:
        fused[name] = normwise_error(grad_s[name], grad_ref[name])
        explicit[name] = normwise_error(grad_e[name], grad_ref[name])
    assert max(explicit.values()) < 40 * torch.finfo(dtype).eps  # the explicit core is sound
    assert_each_gradient_as_accurate(fused, explicit, 3.0, torch.finfo(dtype).eps)


def test_fused_core_builds_no_query_by_key_tensor(monkeypatch):
    """The fused core must not materialise (queries x keys) logits."""
    attn = MultiScaleAttention(16, 16, num_heads=2, use_rel_pos=True, input_size=32)
    attn.attn_impl = "sdpa"
    x = torch.randn(1, 32, 32, 16)  # global: 1024 queries x 1024 keys
    largest = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        largest.append((q.shape, k.shape, v.shape))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr("mvit_det.modeling.fused_attention.F.scaled_dot_product_attention", spy)
    with torch.autograd.profiler.profile(profile_memory=True) as prof:
        attn(x)
    assert largest and largest[0][0][-2] == 1024 and largest[0][1][-2] == 1024
    biggest = max(e.cpu_memory_usage for e in prof.function_events)
    assert biggest < 1024 * 1024 * 4  # one fp32 1024x1024 attention matrix per head would be 4 MiB
