"""The FLOP count of the fused attention op (the fvcore handle that ``import mvit_det`` installs)
is pinned: the two products of attention at the real head size, whatever width the fused core
pads its extended q/k/v to."""

from __future__ import annotations

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from mvit_det import MViT

# A 4-block MViT with global attention: one block per stage, 64x64 input -> 16x16 tokens.
TINY_GLOBAL = dict(
    embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3), attention_mode="global"
)
# Per block (heads, query tokens, key tokens, head dim), from the published layout rules
# (docs/architecture.md): channels and heads double in the first block of stages 3-5, q is pooled
# with stride 2 there; the kv stride starts at 4, halves at each stage and doubles in the last
# block of stages 3 and 4 (4, 4, 2, 1); pooling keeps ceil(side / stride).
BLOCKS = [
    (1, 16 * 16, 4 * 4, 16),
    (2, 8 * 8, 4 * 4, 16),
    (4, 4 * 4, 4 * 4, 16),
    (8, 2 * 2, 4 * 4, 16),
]
# q k^T and attn v, in multiply-adds
EXPECTED = sum(heads * nq * nk * (d + d) for heads, nq, nk, d in BLOCKS)


def count(attn_impl: str, op: str) -> int:
    torch.manual_seed(0)
    model = MViT(**TINY_GLOBAL, attn_impl=attn_impl).eval()
    analysis = FlopCountAnalysis(model, (torch.randn(1, 3, 64, 64),))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.by_operator()[op]


@pytest.mark.parametrize("multiple", [1, 8, 64])
def test_fused_attention_count_is_pinned_for_any_padding(multiple, monkeypatch):
    widths = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        widths.append(q.shape[-1])
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(
        "mvit_det.modeling.fused_attention.kernel_width_multiple", lambda x: multiple
    )
    monkeypatch.setattr("torch.nn.functional.scaled_dot_product_attention", spy)
    assert EXPECTED == 245760
    assert count("sdpa", "scaled_dot_product_attention") == EXPECTED
    # the padding took effect: extended widths are multiples of it, beyond the head dim
    assert widths and all(w % multiple == 0 and w > 16 for w in widths)


def test_explicit_core_counts_the_same_products():
    assert count("eager", "matmul") == EXPECTED
