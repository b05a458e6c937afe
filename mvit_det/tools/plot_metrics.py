"""
Draws the losses (the total and each loss), the learning rate and the evaluation AP (bbox, segm,
...) of a Detectron2 training run over the iterations into a PNG, from its metrics.json.

Examples:
  python tools/plot_metrics.py output/demo_shapes
  python tools/plot_metrics.py output/run/metrics.json --output curves.png --size 600x800

A run resumed from a checkpoint logs again the iterations after that checkpoint: of records with
the same iteration, the last one counts. Records without some keys (evaluation records hold only
AP values) have no point on those lines. Training writes the same picture, metrics.png, into its
output folder after each evaluation and when it ends.

Exit status: 0 written; 2 when the metrics cannot be read or hold no records, or the picture
cannot be written (or matplotlib is missing). The picture appears whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..engine.metrics_plot import DEFAULT_SIZE, METRICS_PICTURE, plot_metrics
from .loading import parse_hw


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """
    Args:
        argv: the arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        the parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="a metrics.json, or a training output folder holding one")
    parser.add_argument(
        "--output",
        help=f"the PNG to write (default: {METRICS_PICTURE} next to the metrics.json)",
    )
    h, w = DEFAULT_SIZE
    parser.add_argument(
        "--size",
        type=parse_hw,
        default=DEFAULT_SIZE,
        metavar="HxW",
        help=f"the picture's height x width in pixels, at least 100x100 (default {h}x{w})",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Args:
        argv: the arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        the exit status.
    """
    args = parse_args(argv)
    metrics = args.metrics
    if os.path.isdir(metrics):
        metrics = os.path.join(metrics, "metrics.json")
    output = args.output or os.path.join(os.path.dirname(metrics), METRICS_PICTURE)
    try:
        series = plot_metrics(metrics, output, args.size)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({args.size[0]}x{args.size[1]} pixels; {series.describe()})")
    return 0
