"""The benchmark tool's arithmetic: FLOP counts of both attention cores, ours/reference ratios."""

from __future__ import annotations

import pytest
import torch

from mvit_det.tools import benchmark


def test_ratios_are_reference_over_ours():
    report = {
        "results": [
            dict(
                model="mvit_det",
                task="train",
                compiled=False,
                ms=100.0,
                peak_mem_gib=2.0,
            ),
            dict(
                model="reference",
                task="train",
                compiled=False,
                ms=250.0,
                peak_mem_gib=5.0,
            ),
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


def test_backbone_flops_of_fused_and_explicit_cores_agree():
    # Traced at a size whose windows are cut by the border (96 px -> 24x24 tokens, windows of 16).
    # Without rel-pos, the fused core's count (q k^T + attn v in the SDPA handle) must equal the
    # explicit core's two matmuls; every other op is shared.
    from types import SimpleNamespace

    from mvit_det import MViT, build_mvit_fpn

    flops = {}
    for attn_impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        bottom_up = MViT(
            embed_dim=16,
            depth=4,
            num_heads=1,
            last_block_indexes=(0, 1, 2, 3),
            adaptive_window_size=16,
            use_rel_pos=False,
            attn_impl=attn_impl,
        )
        backbone = build_mvit_fpn(bottom_up, out_channels=32)
        flops[attn_impl] = benchmark.count_flops(
            backbone, SimpleNamespace(image_size=(96, 96), device="cpu")
        )
    assert flops["sdpa"] == flops["eager"] > 0


def test_reference_with_identical_weights(tmp_path):
    """tools/benchmark.py hands Detectron2's MViT in: built from our config by signature, loaded
    with our weights, its features equal ours."""
    reference = pytest.importorskip("detectron2.modeling.backbone.mvit").MViT
    args = benchmark.parse_args(
        ["--config", "demo/mask_rcnn_mvitv2_shapes.py", "--device", "cpu", "--dtype", "fp32"]
        + ["--batch", "1", "--tasks", "backbone", "--image-size", "64", "--iters", "1"]
        + ["--warmup", "1", "--no-flops", "--output", str(tmp_path / "b.json")]
    )
    report = benchmark.run_benchmark(args, references={"mvit": reference})
    assert {r["model"] for r in report["results"]} == {"mvit_det", "reference"}
    assert report["params_m"]["mvit_det"] == report["params_m"]["reference"]
    assert report["max_rel_feature_diff_fp32"] < 1e-4
    assert [r["task"] for r in report["ours_vs_reference"]] == ["backbone"]
