"""torch.compile of the ViL backbone: one graph without breaks at a fixed size, and inductor
code that matches eager.

Not part of the ``numerics`` re-run under ATEN_CPU_CAPABILITY=default: inductor generates its own
vector code for the CPU it runs on, independently of ATen's kernel choice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvit_det import ViL

from helpers import TINY_VIL, assert_grads_close, forward_backward, relative_error


@pytest.mark.parametrize(
    "attn_impl, checkpointing", [("eager", False), ("sdpa", False), ("sdpa", True)]
)
def test_compile_fullgraph_without_graph_breaks(attn_impl, checkpointing):
    """The whole backbone traces as one graph, forward and backward (AOTAutograd), and gives the
    eager results."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ViL(**TINY_VIL, attn_impl=attn_impl, use_act_checkpoint=checkpointing).train()
    x = torch.randn(1, 3, 64, 96)
    expected, grads = forward_backward(model, x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    actual, compiled_grads = forward_backward(compiled, x)
    for name in expected:
        assert relative_error(actual[name], expected[name]) <= 1e-5
    assert_grads_close(compiled_grads, grads, 1e-5)
    with torch.no_grad():  # the fused core's no-gradient route compiles too
        inference = compiled(x)
    for name in expected:
        assert relative_error(inference[name], expected[name]) <= 1e-5


def test_compile_with_inductor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Inductor (the default torch.compile backend) generates code for an attention block
    (padded chunks, global tokens, folded bias) that matches eager."""
    # A private kernel cache: inductor's cache key does not include ATEN_CPU_CAPABILITY, so
    # kernels cached by a run on another capability could be loaded here.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ViL(**TINY_VIL, attn_impl="sdpa").train()
    block = model.layer2[1]  # two global tokens, a 8 x 12 map in 3 x 3 chunks
    x = torch.randn(1, 2 + 8 * 12, 24, requires_grad=True)
    expected = block(x, (8, 12))
    expected.sum().backward()
    grad_expected = x.grad.clone()
    x.grad = None
    actual = torch.compile(block, fullgraph=True)(x, (8, 12))
    actual.sum().backward()
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(x.grad, grad_expected) <= 1e-4
