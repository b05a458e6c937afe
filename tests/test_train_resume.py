"""Resuming in this process, with a linear model: killed at the worst moments (after a metrics line
and before any checkpoint; right after a checkpoint), a resumed run writes the uninterrupted run's
metrics.json (smoothed losses included) and TensorBoard scalars; a lower ``optimizer.lr`` given
on resuming after divergence is the LR used. Also the LR schedule of a shorter run: the demo's
``--help`` example and the training tool's suggestion."""

from __future__ import annotations

import errno
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.utils.events import get_event_storage
from omegaconf import DictConfig

from mvit_det.checkpoint import MViTCheckpointer
from mvit_det.engine import AccumulationTrainer, ResumableTrainLoader, train_net
from mvit_det.model_zoo import get_config
from mvit_det.tools import demo

from helpers import REPO
from test_reliability import RECORDS, _NoisyRegression, _records_mapper, _tensorboard_steps
from test_train_net import DEMO, TINY

ITERATIONS = 8
# Keys of metrics.json records that measure time, which no two runs share.
TIMES = {"time", "data_time", "rank_data_time", "eta_seconds"}


class _Killed(BaseException):
    """Stands in for SIGKILL: the trainer's handlers (``except Exception``) let it through, and
    with :func:`_nothing_runs_after_the_kill` nothing is written after it is raised."""


def _nothing_runs_after_the_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hook runs once the trainer stops (no final metrics, evaluation or checkpoint); the
    metric writers' files are only closed, as the system closes the files of a killed process."""

    def after_train(self: AccumulationTrainer) -> None:
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicWriter):
                for writer in hook._writers:
                    writer.close()

    monkeypatch.setattr(AccumulationTrainer, "after_train", after_train)


def _config(folder: Path, lr: float = 0.05) -> DictConfig:
    """8 iterations with warmup and two LR steps, a checkpoint every 2, a metrics record and
    TensorBoard scalars every iteration."""
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    del cfg.dataloader["evaluator"]
    cfg.dataloader.train.total_batch_size = 2
    cfg.train.update(output_dir=str(folder), max_iter=ITERATIONS, seed=3, device="cpu")
    cfg.train.update(eval_period=0, log_period=1)
    cfg.train.amp.enabled = False
    cfg.train.checkpointer.period = 2
    cfg.optimizer.lr = lr
    cfg.lr_multiplier.scheduler.milestones = [3, 6]
    cfg.lr_multiplier.warmup_length = 2 / ITERATIONS
    return cfg


def _train(
    cfg: DictConfig, monkeypatch: pytest.MonkeyPatch, resume: bool = False
) -> Dict[str, Any]:
    """Trains the noisy regression on mapped records with ``cfg``, as the training tool does."""
    Path(cfg.train.output_dir).mkdir(exist_ok=True)

    def records_loader(cfg: DictConfig, batch: int, seed: int) -> ResumableTrainLoader:
        return ResumableTrainLoader(RECORDS, _records_mapper, batch, seed)

    monkeypatch.setattr(train_net, "build_train_loader", records_loader)
    torch.manual_seed(0)
    return train_net.do_train(cfg, resume=resume, model=_NoisyRegression())


def _metrics(folder: Path) -> List[Dict[str, Any]]:
    """metrics.json's records without their times."""
    with open(folder / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def _kill_after_metrics_line(iteration: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run dies right after the metrics of ``iteration`` are written (metrics.json's line,
    TensorBoard's scalars)."""
    after_step = hooks.PeriodicWriter.after_step

    def write_then_die(self: hooks.PeriodicWriter) -> None:
        after_step(self)
        if get_event_storage().iter == iteration:
            raise _Killed

    monkeypatch.setattr(hooks.PeriodicWriter, "after_step", write_then_die)


def _kill_after_checkpoint(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run dies right after the checkpoint ``name`` is written and tagged."""
    save = MViTCheckpointer.save

    def save_then_die(self: MViTCheckpointer, basename: str, **kwargs: Any) -> None:
        save(self, basename, **kwargs)
        if basename == name:
            raise _Killed

    monkeypatch.setattr(MViTCheckpointer, "save", save_then_die)


@pytest.mark.parametrize("killed", ["after_first_metrics_line", "after_checkpoint_3"])
def test_resumed_run_writes_the_uninterrupted_metrics(
    killed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, run = tmp_path / "whole", tmp_path / "run"
    _train(_config(whole), monkeypatch)
    expected = _metrics(whole)
    assert [r["iteration"] for r in expected] == list(range(ITERATIONS))

    with monkeypatch.context() as patches:
        _nothing_runs_after_the_kill(patches)
        if killed == "after_first_metrics_line":  # iteration 0; the first checkpoint is at 1
            _kill_after_metrics_line(0, patches)
        else:
            _kill_after_checkpoint("model_0000003", patches)
        with pytest.raises(_Killed):
            _train(_config(run), patches)
    if killed == "after_first_metrics_line":
        assert not (run / "last_checkpoint").exists()
        assert [r["iteration"] for r in _metrics(run)] == [0]
    else:
        assert (run / "last_checkpoint").read_text() == "model_0000003.pth"
        # a checkpoint exists only with its iteration's metrics line
        assert [r["iteration"] for r in _metrics(run)] == [0, 1, 2, 3]
        # the scalar histories are saved as plain data
        saved = torch.load(run / "model_0000003.pth", weights_only=True)["trainer"]
        assert saved["history"]["total_loss"]["iterations"] == [0, 1, 2, 3]

    _train(_config(run), monkeypatch, resume=True)
    # Every iteration once, with the values of the uninterrupted run: the losses are medians over
    # the last 20 iterations, which reach back before the interruption.
    assert _metrics(run) == expected
    assert _tensorboard_steps(run) == _tensorboard_steps(whole) == list(range(ITERATIONS))


def test_an_error_after_an_early_metrics_line_is_reported_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the first checkpoint, after the first metrics line: the error raised is
    that OSError (the printer does not print the iteration again when training stops, where its
    time estimate would divide by zero)."""
    cfg = _config(tmp_path)
    cfg.train.checkpointer.period = 1

    def disk_full(self: MViTCheckpointer, name: str, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, f"cannot write '{name}.pth': No space left on device")

    monkeypatch.setattr(MViTCheckpointer, "save", disk_full)
    with pytest.raises(OSError, match=r"cannot write 'model_0000000.pth': No space left"):
        _train(cfg, monkeypatch)
    assert [r["iteration"] for r in _metrics(tmp_path)] == [0]


def _factor(iteration: int) -> float:
    """The schedule of _config without warmup: x0.1 from iteration 3, x0.01 from 6."""
    return 1.0 if iteration < 3 else 0.1 if iteration < 6 else 0.01


def _sgd_config(folder: Path, lr: float, weight_decay: float) -> DictConfig:
    cfg = _config(folder)
    cfg.optimizer = L(torch.optim.SGD)(
        params=cfg.optimizer.params, lr=lr, weight_decay=weight_decay
    )
    cfg.lr_multiplier.warmup_length = 0.0
    return cfg


def test_resuming_with_the_advised_lower_lr_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Training diverges; the error advises resuming with a lower optimizer.lr; doing so trains
    on with that LR (and weight decay) from the checkpoint's next iteration on."""
    with pytest.raises(FloatingPointError) as info:
        _train(_sgd_config(tmp_path, lr=3e3, weight_decay=0.0), monkeypatch)
    advice = re.search(
        r"The last good checkpoint is (\S+model_(\d{7})\.pth): resume from it \(--resume\) "
        r"with a lower optimizer\.lr",
        str(info.value),
    )
    assert advice, str(info.value)
    last_good = int(advice.group(2))
    assert Path(advice.group(1)) == tmp_path / f"model_{last_good:07d}.pth"
    assert 0 < last_good < ITERATIONS - 1

    with caplog.at_level(logging.WARNING, logger="mvit_det"):
        _train(_sgd_config(tmp_path, lr=1e-3, weight_decay=1e-4), monkeypatch, resume=True)
    lrs = {r["iteration"]: r["lr"] for r in _metrics(tmp_path)}
    assert sorted(lrs) == list(range(ITERATIONS))
    for iteration, lr in lrs.items():
        base = 3e3 if iteration <= last_good else 1e-3  # the diverged run's, then the new one
        assert lr == pytest.approx(base * _factor(iteration), rel=1e-12), iteration
    assert (
        f"optimizer.lr=0.001 replaces the LR the checkpoint was trained with: from iteration "
        f"{last_good + 1} on, the LR schedule continues from the base LR 0.001 instead of 3000"
    ) in caplog.text
    assert "weight_decay of this run's config, 0.0001, replaces the checkpoint's 0.0" in caplog.text
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    groups = final["trainer"]["optimizer"]["param_groups"]
    assert [(g["initial_lr"], g["weight_decay"]) for g in groups] == [(1e-3, 1e-4)]
    assert all(torch.isfinite(v).all() for v in final["model"].values())


def test_demo_help_example_gets_a_schedule_that_fits(
    shapes_datasets_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """``tools/demo.py train.max_iter=300`` (the example of its --help): the milestones and the
    warmup keep their place in the schedule."""
    example = re.search(r"e\.g\. ``(train\.max_iter=(\d+))``", demo.__doc__)
    assert example, "the demo's help has no train.max_iter example"
    max_iter = int(example.group(2))
    configs: List[DictConfig] = []

    def no_training(cfg: DictConfig, num_vis: int, start: float) -> int:
        configs.append(cfg)
        return 0

    monkeypatch.setattr(demo, "_run_demo", no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA: the CPU
        status = demo.main(["--output-dir", str(tmp_path), example.group(1)])
    assert status == 0, capsys.readouterr().err
    (cfg,) = configs
    assert cfg.train.max_iter == max_iter
    recipe = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    fraction = max_iter / recipe.train.max_iter
    milestones = [round(m * fraction) for m in recipe.lr_multiplier.scheduler.milestones]
    assert list(cfg.lr_multiplier.scheduler.milestones) == milestones == [250, 285]
    assert f"scaled to {milestones} for train.max_iter={max_iter}" in capsys.readouterr().out
    # The multiplier: warmup over the recipe's share of the run, then the two steps.
    multiplier = instantiate(cfg.lr_multiplier)
    warmup = round(recipe.lr_multiplier.warmup_length * recipe.train.max_iter * fraction)
    assert warmup == 25
    for iteration, factor in [(warmup, 1.0), (249, 1.0), (250, 0.1), (284, 0.1), (285, 0.01)]:
        assert multiplier(iteration / max_iter) == pytest.approx(factor), iteration
    assert multiplier(0.0) < 0.01 and multiplier((warmup - 1) / max_iter) < 1.0


def test_schedule_error_suggests_milestones_that_work(
    shapes_datasets_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A shorter train.max_iter without milestones is refused with milestones scaled from the
    recipe's; the command with them is accepted."""
    launched: List[Any] = []
    monkeypatch.setattr(train_net, "launch", lambda *args, **kwargs: launched.append(args))
    argv = ["--config-file", str(REPO / DEMO), f"train.output_dir={tmp_path}"] + TINY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_net.run_cli(argv + ["train.max_iter=300"]) == 2
        err = capsys.readouterr().err
        suggestion = re.search(r"e\.g\. (lr_multiplier\.scheduler\.milestones=\S+) ", err)
        assert suggestion, err
        assert suggestion.group(1) == "lr_multiplier.scheduler.milestones=[250,285]"
        assert not launched
        assert train_net.run_cli(argv + ["train.max_iter=300", suggestion.group(1)]) == 0
    assert len(launched) == 1
