"""Training with two processes on the CPU (gloo), as multi-GPU runs do with NCCL."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List

import pytest
import torch
from detectron2.engine import launch
from detectron2.utils import comm
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mvit_det.engine import train_net

from helpers import REPO
from test_train_net import DEMO, TINY

ITERATIONS = 3


def _train_and_report(out_dir: str, argv: List[str]) -> None:
    """One training process: counts the gradient all-reduces (backward passes whose last bucket
    was synchronised) and saves its final weights as ``rank{r}.pt``."""
    wrapped = []
    syncs = [0]
    wrap = train_net._wrap_ddp

    def counting_allreduce(process_group, bucket):
        syncs[0] += bucket.is_last()
        return allreduce_hook(process_group, bucket)

    def wrap_and_count(model, **options):
        ddp = wrap(model, **options)
        ddp.register_comm_hook(None, counting_allreduce)
        wrapped.append(ddp)
        return ddp

    train_net._wrap_ddp = wrap_and_count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_net.main(train_net.build_argument_parser().parse_args(argv))
    report = {"weights": wrapped[0].module.state_dict(), "syncs": syncs[0]}
    torch.save(report, os.path.join(out_dir, f"rank{comm.get_rank()}.pt"))


def test_two_processes_train_identical_weights_with_one_sync_per_step(
    shapes_datasets_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_datasets_root)  # for the spawned processes
    out = tmp_path / "run"
    argv = ["--config-file", str(REPO / DEMO), "--grad-accumulation", "2"] + TINY
    argv += [
        f"train.output_dir={out}",
        "dataloader.train.total_batch_size=4",  # 1 image per process and micro-batch
        f"train.max_iter={ITERATIONS}",
        "train.eval_period=0",
        "lr_multiplier.scheduler.milestones=[1,2]",
    ]
    launch(_train_and_report, 2, dist_url="auto", args=(str(tmp_path), argv))

    reports = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # 2 micro-batches per step, but only the last one's backward synchronises the gradients
    assert [r["syncs"] for r in reports] == [ITERATIONS, ITERATIONS]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == ITERATIONS - 1 and len(final["trainer"]["data"]) == 2
    for name, value in reports[0]["weights"].items():
        assert torch.equal(value, reports[1]["weights"][name]), name
        assert torch.equal(value, final["model"][name]), name
    # the data position of every rank is saved
    assert all(d["next"] >= 2 * ITERATIONS for d in final["trainer"]["data"])
