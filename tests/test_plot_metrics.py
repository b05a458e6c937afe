"""Pictures of training runs: tools/plot_metrics.py on a metrics.json written here (a resumed run
with repeated iterations, records without some keys, a cut-off line), the training hook's
schedule and failures, and a real demo run that draws its curves and prints where they are."""

from __future__ import annotations

import json
import logging
import os
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from mvit_det.engine.metrics_plot import DEFAULT_SIZE, PlotMetricsHook, plot_metrics
from mvit_det.tools import demo
from mvit_det.tools import plot_metrics as tool

# The demo config with a 4-block, 16-dim MViT and batches of 2 images at 128 px.
from test_train_net import TINY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def first_run(it: int) -> Dict[str, Any]:
    return {
        "iteration": it,
        "total_loss": 3.0 - 0.1 * it,
        "loss_cls": 1.0 - 0.05 * it,
        "loss_box_reg": 0.5 + 0.01 * it,
        "lr": 0.001 * (it + 1),
        "time": 0.3,
        "data_time": 0.01,
    }


def resumed_run(it: int) -> Dict[str, Any]:
    return {
        "iteration": it,
        "total_loss": 2.0 - 0.05 * it,
        "loss_cls": 0.7 - 0.02 * it,
        "loss_box_reg": 0.4,
        "lr": 0.002,
        "time": 0.3,
    }


def write_metrics(path: Path, ap_scale: float = 1.0) -> None:
    """A metrics.json as Detectron2 writes it, of a run that logged iterations 0-7, crashed
    while writing iteration 8, and was resumed from its checkpoint of iteration 4: iterations
    5-7 are logged twice. Iteration 2 has no loss_box_reg, iteration 3 a NaN loss_cls, iteration
    4 an evaluation in its line, the resumed iteration 6 no LR, and the final evaluation (after
    iteration 9) a line of its own."""
    first = [first_run(it) for it in range(8)]
    del first[2]["loss_box_reg"]
    first[3]["loss_cls"] = float("nan")
    first[4].update({"bbox/AP": 10.0 * ap_scale, "bbox/AP50": 20.0, "segm/AP": 8.0 * ap_scale})
    resumed = [resumed_run(it) for it in range(5, 10)]
    del resumed[1]["lr"]
    final = {"iteration": 10, "bbox/AP": 30.0 * ap_scale, "bbox/AP50": 50.0, "segm/AP": 25.0}
    lines = [json.dumps(r) for r in first] + ['{"iteration": 8, "total_lo']
    lines += [json.dumps(r) for r in resumed] + [json.dumps(final), ""]
    path.write_text("\n".join(lines))


# What the file above shows, worked out by hand: the first run's values up to iteration 4, the
# resumed run's from 5 on.
EXPECTED: Dict[str, List[Tuple[int, float]]] = {
    "total_loss": [(it, 3.0 - 0.1 * it) for it in range(5)]
    + [(it, 2.0 - 0.05 * it) for it in range(5, 10)],
    "loss_box_reg": [(it, 0.5 + 0.01 * it) for it in (0, 1, 3, 4)]
    + [(it, 0.4) for it in range(5, 10)],
    "loss_cls": [(it, 1.0 - 0.05 * it) for it in (0, 1, 2, 4)]
    + [(it, 0.7 - 0.02 * it) for it in range(5, 10)],
    "lr": [(it, 0.001 * (it + 1)) for it in range(5)] + [(it, 0.002) for it in (5, 7, 8, 9)],
    "bbox/AP": [(4, 10.0), (10, 30.0)],
    "segm/AP": [(4, 8.0), (10, 25.0)],
}


def assert_points(series, expected: List[Tuple[int, float]], name: str) -> None:
    """The series' iterations are exactly, and its values up to rounding, ``expected``."""
    assert list(series.iterations) == [i for i, _ in expected], name
    assert list(series.values) == pytest.approx([v for _, v in expected]), name


def test_tool_draws_the_series_of_a_resumed_run(tmp_path: Path, capsys) -> None:
    metrics = tmp_path / "metrics.json"
    write_metrics(metrics)
    out = tmp_path / "curves.png"
    assert tool.main([str(metrics), "--output", str(out), "--size", "301x457"]) == 0
    assert f"wrote {out} (301x457 pixels; 11 iterations" in capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (301, 457) and image.std() > 0

    series = plot_metrics(str(metrics), str(tmp_path / "again.png"), (301, 457))
    assert [s.name for s in series.losses] == ["total_loss", "loss_box_reg", "loss_cls"]
    assert [s.name for s in series.ap] == ["bbox/AP", "segm/AP"]  # not bbox/AP50
    drawn = {s.name: s for s in series.losses + series.ap + (series.lr,)}
    assert drawn.keys() == EXPECTED.keys()
    for name, expected in EXPECTED.items():
        assert_points(drawn[name], expected, name)
    assert series.iterations == 11
    # the same data draws the same picture; other AP values another one
    assert np.array_equal(cv2.imread(str(tmp_path / "again.png"), cv2.IMREAD_UNCHANGED), image)
    write_metrics(metrics, ap_scale=2.0)
    plot_metrics(str(metrics), str(tmp_path / "other.png"), (301, 457))
    assert not np.array_equal(cv2.imread(str(tmp_path / "other.png"), cv2.IMREAD_UNCHANGED), image)


def test_tool_defaults_and_errors(tmp_path: Path, capsys) -> None:
    write_metrics(tmp_path / "metrics.json")
    assert tool.main([str(tmp_path)]) == 0  # an output folder: metrics.png beside its metrics
    image = cv2.imread(str(tmp_path / "metrics.png"))
    assert image.shape[:2] == DEFAULT_SIZE
    capsys.readouterr()

    assert tool.main([str(tmp_path / "none.json"), "--output", str(tmp_path / "x.png")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    (tmp_path / "empty.json").write_text('{"no_iteration": 1}\n\n')
    assert tool.main([str(tmp_path / "empty.json"), "--output", str(tmp_path / "x.png")]) == 2
    assert "holds no metrics records" in capsys.readouterr().err
    assert tool.main([str(tmp_path), "--output", str(tmp_path / "x.png"), "--size", "50x80"]) == 2
    assert "too small" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_a_failed_drawing_leaves_the_previous_picture(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    write_metrics(tmp_path / "metrics.json")
    picture = tmp_path / "metrics.png"
    plot_metrics(str(tmp_path / "metrics.json"), str(picture), (200, 300))
    before = picture.read_bytes()

    def half_then_fail(self, f, **kwargs):
        f.write(PNG_SIGNATURE + b"half a picture")
        raise RuntimeError("renderer died")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(RuntimeError, match="renderer died"):
        plot_metrics(str(tmp_path / "metrics.json"), str(picture), (200, 300))
    assert picture.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "metrics.png"]  # no temporary file


def fake_trainer(max_iter: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(iter=0, max_iter=max_iter)


def test_hook_draws_once_each_evaluation_is_written_and_at_the_end(tmp_path: Path) -> None:
    """Evaluations after iterations 3 and 7 (period 4; the last, 11, is the end's), metrics
    written after iterations 2, 5, 8, 11 (period 3): pictures after 5 and 8, then at the end."""
    hook = PlotMetricsHook(str(tmp_path / "m.json"), str(tmp_path / "m.png"), 4, 3)
    hook.trainer = fake_trainer(12)
    drawn: List[Any] = []
    hook.draw = lambda: drawn.append(hook.trainer.iter)  # type: ignore[method-assign]
    for it in range(12):
        hook.trainer.iter = it
        hook.after_step()
    hook.after_train()
    assert drawn == [5, 8, 11]
    # without periodic evaluation: only at the end
    hook = PlotMetricsHook(str(tmp_path / "m.json"), str(tmp_path / "m.png"), 0, 1)
    hook.trainer = fake_trainer(5)
    drawn.clear()
    hook.draw = lambda: drawn.append("end")  # type: ignore[method-assign]
    for it in range(5):
        hook.trainer.iter = it
        hook.after_step()
    hook.after_train()
    assert drawn == ["end"]


def test_hook_failure_is_a_warning(tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics.json")
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("mvit_det.engine.metrics_plot")
    log.addHandler(handler)
    try:
        hook = PlotMetricsHook(
            str(tmp_path / "metrics.json"), str(tmp_path / "no" / "such" / "m.png"), 1, 1
        )
        hook.trainer = fake_trainer(3)
        hook.after_step()
        hook.after_train()  # neither raises
    finally:
        log.removeHandler(handler)
    warnings_ = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings_) == 2 and all("training goes on" in w for w in warnings_)
    assert "no/such/m.png" in warnings_[0] and hook.last_series is None


def test_demo_run_draws_its_curves_and_prints_where(
    shapes_datasets_root: str, tmp_path: Path, capsys
) -> None:
    """A real training run (the demo, iterations 0-3, evaluated after iteration 1 and at the
    end): the picture is drawn after the first evaluation and at the end, shows the run's
    metrics.json, and the demo prints where it is."""
    out = tmp_path / "demo"
    argv = ["--output-dir", str(out), "--num-vis", "1"] + TINY
    argv += ["train.max_iter=4", "train.eval_period=2", "train.log_period=1"]
    argv += ["lr_multiplier.scheduler.milestones=[2,3]", "train.checkpointer.period=100"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here
        status = demo.main(argv)
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    picture = out / "metrics.png"
    assert f"Training curves (losses, learning rate, AP): {picture}" in stdout
    assert "Visualisations: " + str(out / "visualizations") in stdout

    # the hook's picture equals the one drawn from the finished run's metrics.json
    again = tmp_path / "again.png"
    series = plot_metrics(os.path.join(str(out), "metrics.json"), str(again))
    image = cv2.imread(str(picture), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == DEFAULT_SIZE
    assert np.array_equal(image, cv2.imread(str(again), cv2.IMREAD_UNCHANGED))
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    drawn = {s.name: s for s in series.losses + series.ap + (series.lr,)}
    for name in ("total_loss", "loss_cls", "loss_mask", "lr", "bbox/AP", "segm/AP"):
        expected = [(r["iteration"], r[name]) for r in records if name in r]
        assert_points(drawn[name], expected, name)
    assert drawn["bbox/AP"].iterations == (1, 4)  # evaluated after iteration 1 and at the end
    log = (out / "log.txt").read_text()
    assert log.count(f"Drew {picture}") == 2
