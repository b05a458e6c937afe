"""Pictures of a training run: the losses, the learning rate and the evaluation AP over the
iterations, drawn from the run's Detectron2 ``metrics.json``.

Training draws ``metrics.png`` into its output folder after each evaluation and when it ends
(:class:`PlotMetricsHook`); ``tools/plot_metrics.py`` draws the same from any ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from detectron2.engine import HookBase

from ..utils.file_io import atomic_write

__all__ = [
    "DEFAULT_SIZE",
    "METRICS_PICTURE",
    "MetricSeries",
    "PlotMetricsHook",
    "Series",
    "draw_metrics",
    "extract_series",
    "plot_metrics",
    "read_metrics",
]

logger = logging.getLogger(__name__)

# The picture training writes into its output folder.
METRICS_PICTURE = "metrics.png"
# (H, W) of the picture in pixels.
DEFAULT_SIZE = (900, 1200)
_DPI = 100
# Keys of metrics.json drawn: the total loss, each loss, the LR, each task's AP.
_TOTAL_LOSS = "total_loss"
_LOSS = re.compile(r"^loss_")
_LR = "lr"
_AP = re.compile(r"^[^/]+/AP$")


@dataclass(frozen=True)
class Series:
    """
    One line of a picture.

    Attributes:
        name: the metrics.json key (e.g. "total_loss", "lr", "bbox/AP").
        iterations: the iterations that have a value, increasing.
        values: the values at those iterations.
    """

    name: str
    iterations: Tuple[int, ...]
    values: Tuple[float, ...]


@dataclass(frozen=True)
class MetricSeries:
    """
    What a picture shows.

    Attributes:
        losses: "total_loss" first, then the ``loss_*`` keys in name order.
        lr: the learning rate, if any record has one.
        ap: the ``<task>/AP`` keys (bbox, segm, ...) in name order.
        iterations: number of distinct iterations read.
    """

    losses: Tuple[Series, ...]
    lr: Optional[Series]
    ap: Tuple[Series, ...]
    iterations: int

    def describe(self) -> str:
        """One line naming what is drawn."""
        parts = [
            f"{len(self.losses)} losses" if self.losses else "no losses",
            "the LR" if self.lr else "no LR",
            "AP of " + ", ".join(s.name.split("/")[0] for s in self.ap) if self.ap else "no AP",
        ]
        return f"{self.iterations} iterations: {', '.join(parts)}"


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """
    The records of a Detectron2 ``metrics.json`` (one JSON object per line), one per iteration.

    A run resumed from a checkpoint writes again the iterations after that checkpoint that the
    interrupted run had logged: of records with the same iteration, the last one written counts.
    Lines that are not JSON objects with an integer ``iteration`` (a line cut off by a crash, an
    empty line) are skipped.

    Args:
        path: the metrics.json file.

    Returns:
        the records, by increasing iteration.

    Raises:
        OSError: the file cannot be read.
    """
    by_iteration: Dict[int, Dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            iteration = record.get("iteration")
            if isinstance(iteration, int) and not isinstance(iteration, bool):
                by_iteration[iteration] = record  # a later line replaces an earlier one
    return [by_iteration[i] for i in sorted(by_iteration)]


def _number(value: Any) -> Optional[float]:
    """A finite number as float; None for anything else (text, bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: List[Dict[str, Any]], key: str) -> Series:
    points = [(r["iteration"], _number(r.get(key))) for r in records]
    kept = [(i, v) for i, v in points if v is not None]
    return Series(key, tuple(i for i, _ in kept), tuple(v for _, v in kept))


def extract_series(records: List[Dict[str, Any]]) -> MetricSeries:
    """
    The lines to draw from metrics.json records (as :func:`read_metrics` returns them).

    Records without a key have no point on its line (evaluation records hold only AP values,
    training records no AP); values that are not finite numbers are left out.

    Args:
        records: one record per iteration, by increasing iteration.

    Returns:
        the series; keys that no record has a number for are left out.
    """
    keys = sorted({k for r in records for k in r})
    losses = ([_TOTAL_LOSS] if _TOTAL_LOSS in keys else []) + [k for k in keys if _LOSS.match(k)]
    lines = [_series(records, k) for k in losses]
    ap = [_series(records, k) for k in keys if _AP.match(k)]
    lr = _series(records, _LR)
    return MetricSeries(
        losses=tuple(s for s in lines if s.values),
        lr=lr if lr.values else None,
        ap=tuple(s for s in ap if s.values),
        iterations=len(records),
    )


def draw_metrics(
    series: MetricSeries, path: str, size: Tuple[int, int] = DEFAULT_SIZE, title: str = ""
) -> None:
    """
    Draws the losses (top), the learning rate (bottom left) and the evaluation AP (bottom
    right) into a PNG file, written atomically (a reader never sees half a picture).

    Args:
        series: what to draw (see :func:`extract_series`).
        path: the PNG file.
        size: (H, W) of the picture in pixels.
        title: the picture's title (e.g. the metrics.json it shows).

    Raises:
        ValueError: a side under 100 pixels.
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    height, width = size
    if min(height, width) < 100:
        raise ValueError(f"a picture of {height}x{width} pixels is too small; use at least 100x100")
    # The figure and its Agg canvas directly, not pyplot: no global backend or figure state.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"drawing {path} needs matplotlib ({e}): pip install matplotlib") from e

    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 2)
    panels = [
        (figure.add_subplot(grid[0, :]), "loss", list(series.losses)),
        (figure.add_subplot(grid[1, 0]), "learning rate", [series.lr] if series.lr else []),
        (figure.add_subplot(grid[1, 1]), "evaluation AP", list(series.ap)),
    ]
    for axes, name, lines in panels:
        axes.set_title(name)
        axes.set_xlabel("iteration")
        axes.grid(True, alpha=0.3)
        for line in lines:
            thick = line.name == _TOTAL_LOSS
            axes.plot(
                line.iterations,
                line.values,
                label=line.name,
                linewidth=2.0 if thick else 1.0,
                marker="o" if len(line.values) == 1 or name == "evaluation AP" else None,
            )
        if lines:
            axes.legend(fontsize="small")
        else:
            message = f"no {name} in metrics.json"
            axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    if title:
        figure.suptitle(title, fontsize="medium")
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=_DPI))


def plot_metrics(
    metrics_json: str, output: str, size: Tuple[int, int] = DEFAULT_SIZE
) -> MetricSeries:
    """
    Reads a metrics.json and draws its losses, learning rate and evaluation AP into a PNG.

    Args:
        metrics_json: a Detectron2 metrics.json.
        output: the PNG file (written atomically).
        size: (H, W) of the picture in pixels.

    Returns:
        the series drawn.

    Raises:
        OSError: the metrics cannot be read or the picture cannot be written.
        ValueError: the file holds no records, or the size is too small.
        ImportError: matplotlib is not installed.
    """
    records = read_metrics(metrics_json)
    if not records:
        raise ValueError(
            f"{metrics_json} holds no metrics records (JSON lines with an 'iteration'); is it a "
            "Detectron2 metrics.json?"
        )
    series = extract_series(records)
    draw_metrics(series, output, size, title=metrics_json)
    return series


class PlotMetricsHook(HookBase):
    """
    Draws the run's metrics.json into a PNG after each evaluation, as soon as the metrics line
    holding its results is written, and when training ends. Register it after the
    ``PeriodicWriter`` that writes metrics.json. A picture that cannot be drawn is a logged
    warning: it never stops training.
    """

    def __init__(
        self,
        metrics_json: str,
        output: str,
        eval_period: int,
        write_period: int,
        size: Tuple[int, int] = DEFAULT_SIZE,
    ) -> None:
        """
        Args:
            metrics_json: the run's metrics.json.
            output: the PNG file.
            eval_period: the evaluation hook's period in iterations (0: only at the end).
            write_period: the period of the writer of metrics.json.
            size: (H, W) of the picture in pixels.
        """
        self._metrics_json = metrics_json
        self._output = output
        self._eval_period = eval_period
        self._write_period = max(1, write_period)
        self._size = size
        self._pending = False  # an evaluation whose results are not drawn yet
        self.last_series: Optional[MetricSeries] = None

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if (
            self._eval_period > 0
            and next_iter % self._eval_period == 0
            and next_iter != self.trainer.max_iter  # evaluated, written and drawn at the end
        ):
            self._pending = True
        if self._pending and next_iter % self._write_period == 0:
            self._pending = False
            self.draw()

    def after_train(self) -> None:
        self.draw()

    def draw(self) -> Optional[MetricSeries]:
        """
        Draws the picture now.

        Returns:
            the series drawn; None when there is nothing to draw yet or drawing failed (logged).
        """
        if not os.path.isfile(self._metrics_json):
            logger.info(f"No {self._metrics_json} yet: {self._output} not drawn.")
            return None
        try:
            self.last_series = plot_metrics(self._metrics_json, self._output, self._size)
        except Exception as e:  # a picture is never worth a training run
            logger.warning(
                f"Could not draw {self._output} from {self._metrics_json} ({type(e).__name__}: "
                f"{e}); training goes on."
            )
            return None
        logger.info(f"Drew {self._output} ({self.last_series.describe()}).")
        return self.last_series
