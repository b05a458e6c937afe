"""The whole ViL backbone against an independent fp64 reference written from the model's rules.

The reference below is plain tensor arithmetic on the parameters of the model's state dict: the
patch embedding as a patch-by-patch product, LayerNorm and GELU from their formulas, and every
attention layer as one dense softmax per query over all tokens, with the allowed keys and the
relative-position bias of each (query, key) pair derived from the two positions:

- stage s: zero-pad the map at the bottom and right to multiples of p, ``Conv2d(kernel = stride
  = p)``, LayerNorm over channels, the stage's learned global tokens in front; then ``depths[s]``
  pairs ``x = x + attn(LN(x))``, ``x = x + mlp(LN(x))``; the globals are dropped at the end and
  the local tokens, as an NCHW map, are the stage output and the next stage's input;
- local queries attend every global token and, in "chunk" mode, every token of the 3 x 3 chunks
  of side w around their own chunk, in "exact" mode the (2w + 1)^2 window centred on them, both
  clipped at the map border; global queries attend every token; one softmax over all keys;
- logits are ``scale * q . k`` plus a per-head bias: for local pairs the table entry
  ``(dr + 2w - 1) * (4w - 1) + (dc + 2w - 1)`` with (dr, dc) = query - key,
  ``g2l[0]`` for global query -> local key, ``g2l[1]`` for local query -> global key and ``g2g``
  for global -> global pairs;
- with separate global weights the global rows use ``query_global``, ``kv_global`` and
  ``proj_global``; local queries still see the globals' keys and values through ``kv``.

Outputs, input gradients and (in training) parameter gradients of every attention core must
equal the reference in fp64.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, FrozenSet, Mapping, Set, Tuple

import pytest
import torch
import torch.nn.functional as F

from mvit_det import ViL

pytestmark = pytest.mark.numerics

TOL = 1e-10

# A tiny five-pair ViL: several heads, windows that do not tile most of the stage maps and, at
# stage 4, a map smaller than one chunk.
BASE = dict(
    embed_dims=(16, 24, 32, 48),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 3),
    patch_sizes=(4, 2, 2, 2),
    window=3,
)
# Global tokens per stage (0, 1 and 2 in one model, or none at all) and shared projections.
GLOBALS = {
    "globals-shared": dict(num_global_tokens=(1, 2, 1, 0), share_global_weights=True),
    "globals-separate": dict(num_global_tokens=(1, 2, 1, 0), share_global_weights=False),
    "no-globals": dict(num_global_tokens=(0, 0, 0, 0), share_global_weights=True),
}
# 60 x 84: stage maps 15 x 21, 8 x 11, 4 x 6, 2 x 3 (patch padding from stage 2 on);
# 57 x 83: the same maps, with a padded first patch row and column as well.
SIZES = ((60, 84), (57, 83))
IMPLS = ("eager", "sdpa", "recompute", "dense", "auto")
BATCH = 2


# ---------------------------------------------------------------- the reference


class _Params:
    """Read-only view of a state dict that records which entries were read."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        """
        Args:
            state: parameter name -> tensor.
        """
        self.state = state
        self.used: Set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return self.state[name]


def _layer_norm(x: torch.Tensor, p: _Params, prefix: str, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dimension from its formula (biased variance)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * p[f"{prefix}.weight"] + p[f"{prefix}.bias"]


def _linear(x: torch.Tensor, p: _Params, prefix: str) -> torch.Tensor:
    """``x W^T + b``."""
    return x @ p[f"{prefix}.weight"].t() + p[f"{prefix}.bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the Gaussian CDF (erf form)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _patch_embed(
    x: torch.Tensor, p: _Params, prefix: str, patch: int, num_global: int
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """
    Zero-pads the map at the bottom and right to multiples of ``patch``, applies the patch conv
    as a product of every non-overlapping patch with the kernel, LayerNorm, then the globals.

    Args:
        x: (B, C_in, H, W) map.
        p: parameters.
        prefix: "layer{s}.0".
        patch: patch side.
        num_global: global tokens of the stage.

    Returns:
        (B, G + H' * W', C) tokens and (H', W').
    """
    B, c_in, H, W = x.shape
    rows, cols = (H + patch - 1) // patch, (W + patch - 1) // patch
    padded = x.new_zeros(B, c_in, rows * patch, cols * patch)
    padded[:, :, :H, :W] = x
    patches = padded.reshape(B, c_in, rows, patch, cols, patch)  # (B, C_in, H', p, W', p)
    weight = p[f"{prefix}.proj.weight"]  # (C, C_in, p, p)
    tokens = torch.einsum("bkhiwj,ckij->bhwc", patches, weight) + p[f"{prefix}.proj.bias"]
    tokens = _layer_norm(tokens.reshape(B, rows * cols, -1), p, f"{prefix}.norm_embed")
    if num_global:
        globals_ = p[f"{prefix}.cls_token"].expand(B, -1, -1)  # (B, G, C)
        tokens = torch.cat([globals_, tokens], dim=1)
    return tokens, (rows, cols)


def _local_bias(
    p: _Params, prefix: str, hw: Tuple[int, int], window: int, mode: str, num_global: int
) -> torch.Tensor:
    """
    Logit bias of every local query towards every key, -inf for keys it may not attend.

    Args:
        p: parameters.
        prefix: "layer{s}.{i}.attn".
        hw: (H, W) of the map.
        window: w.
        mode: "chunk" or "exact".
        num_global: G.

    Returns:
        (heads, H * W, G + H * W).
    """
    H, W = hw
    w = window
    pos = torch.arange(H * W)
    row, col = pos // W, pos % W  # raster positions of queries and keys
    dr = row[:, None] - row[None, :]  # (HW query, HW key): query - key
    dc = col[:, None] - col[None, :]
    if mode == "chunk":
        # The 3 x 3 chunks around the query's chunk span rows [(r // w - 1) w, (r // w + 2) w).
        row_lo, col_lo = (row // w - 1) * w, (col // w - 1) * w
        inside = (row[None, :] >= row_lo[:, None]) & (row[None, :] < row_lo[:, None] + 3 * w)
        inside &= (col[None, :] >= col_lo[:, None]) & (col[None, :] < col_lo[:, None] + 3 * w)
    else:
        inside = (dr.abs() <= w) & (dc.abs() <= w)
    # Every allowed offset has an entry in the table.
    assert dr[inside].abs().max() <= 2 * w - 1 and dc[inside].abs().max() <= 2 * w - 1
    entry = (dr + 2 * w - 1) * (4 * w - 1) + (dc + 2 * w - 1)
    entry = torch.where(inside, entry, torch.zeros_like(entry))
    table = p[f"{prefix}.local_relative_position_bias_table"]  # ((4w - 1)^2, heads)
    local = table[entry].permute(2, 0, 1).masked_fill(~inside, float("-inf"))  # (nh, HW, HW)
    if not num_global:
        return local
    to_global = p[f"{prefix}.g2l_relative_position_bias"][1]  # (nh, G)
    return torch.cat([to_global[:, None, :].expand(-1, H * W, -1), local], dim=-1)


def _attention(
    x: torch.Tensor,
    hw: Tuple[int, int],
    p: _Params,
    prefix: str,
    *,
    heads: int,
    num_global: int,
    window: int,
    mode: str,
    shared: bool,
) -> torch.Tensor:
    """
    Vision Longformer attention as dense masked attention.

    Args:
        x: (B, G + H * W, C) normalised tokens.
        hw: (H, W).
        p: parameters.
        prefix: "layer{s}.{i}.attn".
        heads: attention heads.
        num_global: G.
        window: w.
        mode: "chunk" or "exact".
        shared: whether the global rows use the local projections.

    Returns:
        (B, G + H * W, C).
    """
    B, N, C = x.shape
    G, d = num_global, C // heads
    scale = d**-0.5

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, n, C) -> (B, heads, n, d)
        return t.reshape(B, t.shape[1], heads, d).transpose(1, 2)

    def merge(t: torch.Tensor) -> torch.Tensor:  # (B, heads, n, d) -> (B, n, C)
        return t.transpose(1, 2).reshape(B, t.shape[2], C)

    q = split(_linear(x[:, G:], p, f"{prefix}.query"))  # (B, nh, HW, d)
    kv = _linear(x, p, f"{prefix}.kv")  # (B, N, 2C): [k; v] of all tokens
    k, v = split(kv[..., :C]), split(kv[..., C:])
    logits = scale * q @ k.transpose(-2, -1) + _local_bias(p, prefix, hw, window, mode, G)
    out_local = _linear(merge(logits.softmax(-1) @ v), p, f"{prefix}.proj")
    if not G:
        return out_local
    names = ("query", "kv", "proj") if shared else ("query_global", "kv_global", "proj_global")
    q_g = split(_linear(x[:, :G], p, f"{prefix}.{names[0]}"))  # (B, nh, G, d)
    kv_g = _linear(x, p, f"{prefix}.{names[1]}")
    k_g, v_g = split(kv_g[..., :C]), split(kv_g[..., C:])
    g2g = p[f"{prefix}.g2g_relative_position_bias"]  # (nh, G, G)
    g2l = p[f"{prefix}.g2l_relative_position_bias"][0]  # (nh, G)
    bias = torch.cat([g2g, g2l[:, :, None].expand(-1, -1, N - G)], dim=-1)  # (nh, G, N)
    logits = scale * q_g @ k_g.transpose(-2, -1) + bias
    out_global = _linear(merge(logits.softmax(-1) @ v_g), p, f"{prefix}.{names[2]}")
    return torch.cat([out_global, out_local], dim=1)


def reference_vil(
    x: torch.Tensor, p: _Params, cfg: Mapping[str, object], mode: str
) -> Dict[str, torch.Tensor]:
    """
    The ViL backbone from its rules.

    Args:
        x: (B, 3, H, W) images.
        p: the model's parameters by state-dict name.
        cfg: the constructor arguments of the model (``BASE`` plus a ``GLOBALS`` entry).
        mode: "chunk" or "exact".

    Returns:
        "scale2".."scale5" -> (B, C_s, H_s, W_s).
    """
    outputs = {}
    for s in range(4):
        G = cfg["num_global_tokens"][s]
        tokens, hw = _patch_embed(x, p, f"layer{s + 1}.0", cfg["patch_sizes"][s], G)
        for j in range(cfg["depths"][s]):
            attn, mlp = f"layer{s + 1}.{2 * j + 1}", f"layer{s + 1}.{2 * j + 2}"
            tokens = tokens + _attention(
                _layer_norm(tokens, p, f"{attn}.norm"),
                hw,
                p,
                f"{attn}.attn",
                heads=cfg["num_heads"][s],
                num_global=G,
                window=cfg["window"],
                mode=mode,
                shared=cfg["share_global_weights"],
            )
            hidden = _gelu(_linear(_layer_norm(tokens, p, f"{mlp}.norm"), p, f"{mlp}.mlp.fc1"))
            tokens = tokens + _linear(hidden, p, f"{mlp}.mlp.fc2")
        local = tokens[:, G:]  # (B, H * W, C)
        x = local.reshape(local.shape[0], *hw, -1).permute(0, 3, 1, 2)  # (B, C, H, W)
        outputs[f"scale{s + 2}"] = x
    return outputs


# ---------------------------------------------------------------- model, inputs, comparisons


def _config(globals_cfg: str) -> Dict[str, object]:
    """The constructor arguments of a test model, window mode and core aside."""
    return {**BASE, **GLOBALS[globals_cfg]}


def _model(globals_cfg: str, mode: str, attn_impl: str) -> ViL:
    """A fp64 ViL with every parameter drawn at random (the same for every ``attn_impl``)."""
    torch.manual_seed(0)
    model = ViL(**_config(globals_cfg), window_mode=mode, attn_impl=attn_impl).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            if name.endswith("norm.weight") or name.endswith("norm_embed.weight"):
                param.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".weight"):  # linear and conv
                param.copy_(noise / math.sqrt(param[0].numel()))
            else:  # biases, bias tables, global tokens
                param.copy_(0.5 * noise)
    return model


def _inputs(size: Tuple[int, int]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Images and the weights of the random linear functional of the outputs."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, 3, *size, generator=gen, dtype=torch.float64)
    weights = {}
    hw = size
    for s, (patch, dim) in enumerate(zip(BASE["patch_sizes"], BASE["embed_dims"])):
        hw = tuple((n + patch - 1) // patch for n in hw)
        weights[f"scale{s + 2}"] = torch.randn(BATCH, dim, *hw, generator=gen, dtype=torch.float64)
    return x, weights


def _functional(
    outputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The random linear functional ``sum_s <outputs[s], weights[s]>``."""
    return sum((outputs[k] * weights[k]).sum() for k in sorted(weights))


@functools.lru_cache(maxsize=None)
def _reference(
    size: Tuple[int, int], globals_cfg: str, mode: str
) -> Tuple[
    Dict[str, torch.Tensor], torch.Tensor, Dict[str, torch.Tensor], FrozenSet[str], FrozenSet[str]
]:
    """
    Reference outputs, input gradient and parameter gradients (of the random functional), and
    the state-dict names the reference read.
    """
    state = {
        k: t.detach().clone().requires_grad_(True)
        for k, t in _model(globals_cfg, mode, "eager").state_dict().items()
    }
    params = _Params(state)
    x, weights = _inputs(size)
    x.requires_grad_(True)
    outputs = reference_vil(x, params, _config(globals_cfg), mode)
    names = sorted(state)
    grads = torch.autograd.grad(
        _functional(outputs, weights), [x] + [state[k] for k in names], allow_unused=True
    )
    param_grads = {
        k: torch.zeros_like(state[k]) if g is None else g for k, g in zip(names, grads[1:])
    }
    outputs = {k: v.detach() for k, v in outputs.items()}
    return outputs, grads[0], param_grads, frozenset(params.used), frozenset(state)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected`` (the absolute
    difference where ``expected`` is all zero)."""
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    return diff / scale if scale > 0 else diff


def _assert_outputs(
    outputs: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    """Same scales, shapes and values (within ``TOL``)."""
    assert sorted(outputs) == sorted(expected)
    for name, ref in expected.items():
        assert outputs[name].shape == ref.shape, name
        err = _relative_error(outputs[name], ref)
        assert err < TOL, f"{name}: relative error {err:.3g}"


# ---------------------------------------------------------------- tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tensors here are tiny, and on a busy machine the waits of a
    second thread cost far more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("globals_cfg", sorted(GLOBALS))
@pytest.mark.parametrize("mode", ("chunk", "exact"))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_training_outputs_and_gradients_equal_reference(size, mode, globals_cfg, attn_impl):
    """Train mode with parameter gradients (the cores' bias-gradient paths): outputs, input
    gradient and every parameter gradient equal the reference."""
    expected, grad_x, grad_params, _, _ = _reference(size, globals_cfg, mode)
    model = _model(globals_cfg, mode, attn_impl).train()
    x, weights = _inputs(size)
    x.requires_grad_(True)
    outputs = model(x)
    _assert_outputs(outputs, expected)
    _functional(outputs, weights).backward()
    err = _relative_error(x.grad, grad_x)
    assert err < TOL, f"input gradient: relative error {err:.3g}"
    for name, param in model.named_parameters():
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        err = _relative_error(grad, grad_params[name])
        assert err < TOL, f"gradient of {name}: relative error {err:.3g}"


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("globals_cfg", sorted(GLOBALS))
@pytest.mark.parametrize("mode", ("chunk", "exact"))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_inference_outputs_and_input_gradient_equal_reference(size, mode, globals_cfg, attn_impl):
    """Eval mode with frozen parameters (the bias as a constant mask), with an input gradient and
    under ``no_grad``: outputs and input gradient equal the reference."""
    expected, grad_x, _, _, _ = _reference(size, globals_cfg, mode)
    model = _model(globals_cfg, mode, attn_impl).eval().requires_grad_(False)
    x, weights = _inputs(size)
    with torch.no_grad():
        _assert_outputs(model(x), expected)
    x.requires_grad_(True)
    outputs = model(x)
    _assert_outputs(outputs, expected)
    (grad,) = torch.autograd.grad(_functional(outputs, weights), [x])
    err = _relative_error(grad, grad_x)
    assert err < TOL, f"input gradient: relative error {err:.3g}"


@pytest.mark.parametrize("globals_cfg", sorted(GLOBALS))
def test_reference_reads_every_parameter(globals_cfg):
    """The reference uses the whole state dict, so no parameter of the model goes unchecked."""
    _, _, _, used, names = _reference(SIZES[0], globals_cfg, "chunk")
    assert used == names


@pytest.mark.parametrize("globals_cfg", sorted(GLOBALS))
def test_window_modes_differ_at_every_scale(globals_cfg):
    """The comparisons tell the window rules apart: on these weights and inputs "chunk" and
    "exact" give outputs that differ by far more than the tolerance at every scale."""
    chunk = _reference(SIZES[0], globals_cfg, "chunk")[0]
    exact = _reference(SIZES[0], globals_cfg, "exact")[0]
    for name in chunk:
        assert _relative_error(exact[name], chunk[name]) > 1e-3, name
