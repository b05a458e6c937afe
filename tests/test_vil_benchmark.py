"""tools/benchmark.py on ViL configs: the attention cores side by side, CPU peak memory (tensor
bytes and resident memory), the core that "auto" picks, and the dense core left out where its
(tokens x tokens) tensors cannot fit."""

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


def test_attention_cores_side_by_side(tmp_path, capsys):
    report = run(
        tmp_path,
        "--tasks", "backbone,infer", "--image-size", "64x96", "--infer-size", "64x96",
        "--compare-attn-impls", "sdpa,eager,recompute,dense", "--profile",
    )  # fmt: skip
    rows = {(r["model"], r["task"]): r for r in report["results"]}
    cores = ("sdpa", "eager", "recompute", "dense")
    assert set(rows) == {(m, t) for m in cores for t in ("backbone", "infer")}
    for row in rows.values():
        assert row["ms"] > 0 and row["peak_mem_gib"] > 0
        assert row["peak_rss_gib"] >= 0  # the resident peak of each core, per call
        assert 0 < sum(share for _, share, _ in row["top_ops"]) <= 100.0
    assert report["auto_attn_impl"] == {"training": "recompute", "inference": "sdpa"}
    assert (
        "attn_impl auto on cpu: training -> recompute, inference -> sdpa" in capsys.readouterr().out
    )
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


@pytest.mark.parametrize("core", ["dense", "recompute"])
def test_vil_cores_are_refused_for_mvit(core):
    with pytest.raises(ValueError, match=f"'{core}' exists for ViL backbones only"):
        benchmark.build_models(
            benchmark.parse_args(
                ["--config", "mask_rcnn_mvitv2_t.py", "--compare-attn-impls", f"eager,{core}"]
            )
        )


def test_resident_peak_counts_what_a_call_holds():
    """The resident peak of a call that holds 256 MiB at once (written, so resident) is most of
    that, even after the memory is freed, and that of a later call that holds little is far
    less."""
    base = benchmark.reset_resident_peak()
    if base is None:
        pytest.skip("no resettable resident high-water mark on this system")
    block = torch.ones(64 * 2**20)  # 256 MiB of float32, every page written
    del block
    held = benchmark._proc_status_bytes("VmHWM") - base
    assert held >= 200 * 2**20  # a few pages may have been resident (and free) before
    base = benchmark.reset_resident_peak()
    small = torch.ones(2**20)
    del small
    assert benchmark._proc_status_bytes("VmHWM") - base < 64 * 2**20
