"""The benchmark tool's arithmetic: fused-attention FLOP count and ours/reference ratios."""

from __future__ import annotations

import importlib.util
import os

import torch
from fvcore.nn import FlopCountAnalysis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark", os.path.join(ROOT, "tools/benchmark.py"))
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_sdpa_flops_equal_the_explicit_matmuls():
    q, k, v = torch.randn(2, 3, 50, 16), torch.randn(2, 3, 20, 16), torch.randn(2, 3, 20, 16)
    analysis = FlopCountAnalysis(Attention(), (q, k, v))
    analysis.set_op_handle("aten::scaled_dot_product_attention", benchmark.sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    # q k^T: 2*3*50*20*16 multiply-adds, attn v: the same again
    assert analysis.total() == 2 * (2 * 3 * 50 * 20 * 16)


def test_ratios_are_reference_over_ours():
    report = {
        "results": [
            dict(model="mvit_det", task="train", compiled=False, ms=100.0, peak_mem_gib=2.0),
            dict(model="reference", task="train", compiled=False, ms=250.0, peak_mem_gib=5.0),
            dict(model="mvit_det", task="train", compiled=True, ms=50.0, peak_mem_gib=1.0),
            dict(model="reference", task="train", compiled=True, error="compile failed"),
        ]
    }
    benchmark.add_ratios(report)
    assert report["ours_vs_reference"] == [
        {"task": "train", "compiled": False, "speedup": 2.5, "memory_ratio": 0.4},
        # the compiled reference failed: compared with the eager reference
        {"task": "train", "compiled": True, "speedup": 5.0, "memory_ratio": 0.2},
    ]
