"""FLOPs, parameters, activations and structure of a detector or its backbone, per module.

The counts are those of Detectron2's ``tools/analyze_model.py`` (fvcore, multiply-adds), with the
fused attention op counted (see :mod:`mvit_det.analysis`). The input is one synthetic image of
``--image-size`` after the config's test resize, or the backbone alone at that size
(``--backbone``).

Examples:
  python tools/analyze.py --config mask_rcnn_mvitv2_t.py --tasks flop parameter
  python tools/analyze.py --config mask_rcnn_mvitv2_b.py --backbone --image-size 1024x1024 \
      --tasks flop activation --max-depth 3 --output output/analysis.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis, flop_count_table, parameter_count
from fvcore.nn import parameter_count_table

from ..analysis import register_fvcore_handles
from ..utils.file_io import atomic_write
from .loading import LoadedModel, ToolError, add_model_arguments, load_model

__all__ = ["analyze", "main"]

TASKS = ("flop", "parameter", "activation", "structure")


def _size(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1216, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sides must be >= 1, got {text!r}")
    return h, w


def _inputs(loaded: LoadedModel, size: tuple, backbone: bool) -> Any:
    """The model's forward arguments for one random image of ``size``."""
    generator = np.random.default_rng(0)
    image = generator.integers(0, 256, (*size, 3), dtype=np.uint8)  # (H, W, 3)
    model_input = loaded.model_input(image)
    if not backbone:
        return ([model_input],)
    # The backbone sees the normalised image padded to the backbone's size divisibility.
    return (loaded.model.preprocess_image([model_input]).tensor,)


def _by_module(counts: Dict[str, int], scale: float) -> Dict[str, float]:
    """Per-module counts named as in ``model.named_modules()`` (without the adapter's prefix)."""
    named = {}
    for name, count in counts.items():
        name = (
            "" if name == "model" else name[len("model.") :] if name.startswith("model.") else name
        )
        named[name] = count / scale
    return named


def analyze(
    loaded: LoadedModel, tasks: List[str], size: tuple, backbone: bool, max_depth: int
) -> Dict[str, Any]:
    """
    Runs the analyses.

    Args:
        loaded: the model.
        tasks: any of "flop", "parameter", "activation", "structure".
        size: (H, W) of the synthetic image before the test resize.
        backbone: analyse ``model.backbone`` instead of the whole detector.
        max_depth: depth of the per-module tables.

    Returns:
        per task: the total, a per-module dict and the printed table.
    """
    register_fvcore_handles()
    module = loaded.model.backbone if backbone else loaded.model
    report: Dict[str, Any] = {"model": "backbone" if backbone else "detector", "image_size": size}
    with torch.no_grad():
        inputs = _inputs(loaded, size, backbone)
        if "flop" in tasks:
            flops = FlopCountAnalysis(module, inputs)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            report["flop"] = {
                "total_gflops": flops.total() / 1e9,
                "by_operator_gflops": {k: v / 1e9 for k, v in flops.by_operator().items()},
                "by_module_gflops": _by_module(flops.by_module(), 1e9),
                "table": flop_count_table(flops, max_depth=max_depth),
            }
        if "activation" in tasks:
            # Detectron2 inputs and outputs (dicts, Instances) flattened to tensors, as Detectron2's
            # FlopCountAnalysis does.
            adapter = TracingAdapter(module, inputs, allow_non_tensor=True)
            acts = ActivationCountAnalysis(adapter, adapter.flattened_inputs)
            acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            report["activation"] = {
                "total_m": acts.total() / 1e6,
                "by_module_m": _by_module(acts.by_module(), 1e6),
                "table": flop_count_table(acts, max_depth=max_depth),
            }
    if "parameter" in tasks:
        counts = parameter_count(module)
        report["parameter"] = {
            "total_m": counts[""] / 1e6,
            "by_module_m": {k: v / 1e6 for k, v in counts.items()},
            "table": parameter_count_table(module, max_depth=max_depth),
        }
    if "structure" in tasks:
        report["structure"] = {"table": str(module)}
    return report


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["flop", "parameter"])
    parser.add_argument(
        "--image-size", type=_size, default=(800, 1216), help="HxW of the synthetic image"
    )
    parser.add_argument("--backbone", action="store_true", help="analyse the backbone only")
    parser.add_argument("--max-depth", type=int, default=4, help="depth of the module tables")
    parser.add_argument("--output", default="", help="also write the report as JSON here")
    add_model_arguments(parser, weights_required=False)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """
    The command line: prints the tables and totals, writes the JSON report if asked.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 bad arguments.
    """
    args = parse_args(argv)
    try:
        loaded = load_model(args.config, args.weights, args.device, args.opts)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = analyze(loaded, args.tasks, args.image_size, args.backbone, args.max_depth)
    for task in args.tasks:
        print(f"\n== {task} ==\n{report[task]['table']}")
    summary = {
        "flop": lambda r: f"total GFLOPs (multiply-adds): {r['total_gflops']:.3f}",
        "parameter": lambda r: f"total parameters: {r['total_m']:.3f} M",
        "activation": lambda r: f"total activations: {r['total_m']:.3f} M",
    }
    for task in args.tasks:
        if task in summary:
            print(summary[task](report[task]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write(args.output, lambda f: f.write(json.dumps(report, indent=2).encode()))
        print(f"wrote {args.output}")
    return 0
