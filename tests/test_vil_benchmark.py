"""tools/benchmark.py on ViL configs: the attention cores side by side, CPU peak memory, and the
dense core left out where its (tokens x tokens) tensors cannot fit."""

from __future__ import annotations

import json

import pytest
import torch

from mvit_det import ViL, vil_preset
from mvit_det.tools import benchmark

DEMO = "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py"


def run(tmp_path, *extra: str) -> dict:
    args = benchmark.parse_args(
        ["--config", DEMO, "--device", "cpu", "--dtype", "fp32", "--batch", "1"]
        + ["--iters", "1", "--warmup", "1", "--no-flops", "--output", str(tmp_path / "b.json")]
        + list(extra)
    )
    return benchmark.run_benchmark(args)


def test_attention_cores_side_by_side(tmp_path):
    report = run(
        tmp_path,
        "--tasks", "backbone,infer", "--image-size", "64x96", "--infer-size", "64x96",
        "--compare-attn-impls", "sdpa,eager,dense", "--profile",
    )  # fmt: skip
    rows = {(r["model"], r["task"]): r for r in report["results"]}
    assert set(rows) == {(m, t) for m in ("sdpa", "eager", "dense") for t in ("backbone", "infer")}
    for row in rows.values():
        assert row["ms"] > 0 and row["peak_mem_gib"] > 0
        assert 0 < sum(share for _, share, _ in row["top_ops"]) <= 100.0
    assert report["image_size"] == (64, 96)
    assert json.loads((tmp_path / "b.json").read_text())["results"]
    assert report["params_m"]["sdpa"] == report["params_m"]["dense"]  # the same model


def test_dense_core_is_left_out_where_it_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "available_memory_bytes", lambda: 2**10)
    report = run(
        tmp_path, "--tasks", "backbone", "--image-size", "64", "--compare-attn-impls", "sdpa,dense"
    )
    rows = {r["model"]: r for r in report["results"]}
    assert "ms" in rows["sdpa"]
    assert rows["dense"]["error"].startswith("not run: one (tokens x tokens) tensor")


def test_dense_attention_bytes_follow_the_stage_maps():
    args = benchmark.parse_args(["--image-size", "800x1216", "--batch", "1", "--dtype", "fp32"])
    model = torch.nn.Module()
    model.backbone = torch.nn.Module()
    model.backbone.bottom_up = ViL(**vil_preset("S"))
    local = 200 * 304  # stage 1 at stride 4, 3 heads, 1 global token
    assert benchmark.dense_attention_bytes(model, args) == 3 * local * (local + 1) * 4


def test_dense_is_refused_for_mvit(tmp_path):
    with pytest.raises(ValueError, match="'dense' exists for ViL backbones only"):
        benchmark.build_models(
            benchmark.parse_args(
                ["--config", "mask_rcnn_mvitv2_t.py", "--compare-attn-impls", "dense"]
            )
        )
