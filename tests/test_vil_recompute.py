"""The recomputing ViL attention core under torch.compile: ``attn_impl="auto"`` picks it for
training on the CPU, so a compiled training step traces its autograd function (forward and
backward, with the loop over blocks unrolled) into one graph.
"""

from __future__ import annotations

import torch

from mvit_det import ViL

from helpers import TINY_VIL, relative_error


def test_compile_fullgraph_forward_and_backward():
    """An attention block with the recomputing core (two global tokens, a map that the chunks do
    not tile) traces as one graph, forward and backward (AOTAutograd's ``aot_eager`` backend),
    and matches eager in the output and in the gradients of the input and of every parameter
    (the bias tables included)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ViL(**TINY_VIL, attn_impl="recompute").train()
    block = model.layer2[1]  # two global tokens, a 8 x 13 map in 3 x 3 chunks
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "relative_position" in name:
                p.normal_(0, 1)
    x = torch.randn(2, 2 + 8 * 13, 24, requires_grad=True)
    weight = torch.randn(2, 2 + 8 * 13, 24)

    def run(fn):
        block.zero_grad()
        x.grad = None
        out = fn(x, (8, 13))
        (out * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        return out.detach(), x.grad.clone(), grads

    expected, grad_x, grads = run(block)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    actual, compiled_grad_x, compiled_grads = run(compiled)
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(compiled_grad_x, grad_x) <= 1e-4
    for name, grad in grads.items():
        assert relative_error(compiled_grads[name], grad) <= 1e-4, name
