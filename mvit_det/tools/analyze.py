"""FLOPs, parameters, activations and structure of a detector or its backbone, per module.

The counts are those of Detectron2's ``tools/analyze_model.py`` (fvcore, multiply-adds), with the
fused attention op counted (see :mod:`mvit_det.analysis`). The input is one synthetic image: with
``--image-size HxW``, the model is given an HxW image exactly (no test resize; the detector pads
it to its size divisibility); without it, a 480x640 image (a typical COCO image) after the
config's test resize, as Detectron2's tool feeds dataset images through the test mapper.
``--backbone`` analyses the backbone alone on the padded, normalised batch. The size used is
printed and recorded in the JSON report (``requested_image_size``, ``input_size``,
``input_shape``).

Examples:
  python tools/analyze.py --config mask_rcnn_mvitv2_t.py --tasks flop parameter
  python tools/analyze.py --config mask_rcnn_mvitv2_b.py --backbone --image-size 1024x1024 \\
      --tasks flop activation --max-depth 3 --output output/analysis.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis, flop_count_table, parameter_count
from fvcore.nn import parameter_count_table

from ..analysis import register_fvcore_handles
from ..utils.file_io import atomic_write
from .loading import LoadedModel, ToolError, add_image_size_argument, add_model_arguments
from .loading import load_model, synthetic_input

__all__ = ["analyze", "main"]

TASKS = ("flop", "parameter", "activation", "structure")


def _inputs(
    loaded: LoadedModel, image_size: Optional[Tuple[int, int]], backbone: bool
) -> Tuple[tuple, Dict[str, Any]]:
    """The analysed module's forward arguments for one random image, and the sizes to record."""
    model_input, record = synthetic_input(loaded, image_size)
    if backbone:
        # The backbone sees the normalised image padded to the backbone's size divisibility.
        args: tuple = (loaded.model.preprocess_image([model_input]).tensor,)
        record["input_shape"] = list(args[0].shape)  # (1, 3, H, W)
    else:
        args = ([model_input],)
        record["input_shape"] = list(model_input["image"].shape)  # (3, H, W)
    return args, record


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
    loaded: LoadedModel,
    tasks: List[str],
    image_size: Optional[Tuple[int, int]],
    backbone: bool,
    max_depth: int,
) -> Dict[str, Any]:
    """
    Runs the analyses.

    Args:
        loaded: the model.
        tasks: any of "flop", "parameter", "activation", "structure".
        image_size: (H, W) of the image the model gets, exactly; None for a 480x640 image after
            the config's test resize.
        backbone: analyse ``model.backbone`` instead of the whole detector.
        max_depth: depth of the per-module tables.

    Returns:
        the sizes (``requested_image_size``: the ``image_size`` argument; ``input_size``: (H, W)
        of the image the model got, before padding; ``input_shape``: the analysed module's input
        tensor) and per task: the total, a per-module dict and the printed table.
    """
    register_fvcore_handles()
    module = loaded.model.backbone if backbone else loaded.model
    with torch.no_grad():
        inputs, sizes = _inputs(loaded, image_size, backbone)
        report: Dict[str, Any] = {"model": "backbone" if backbone else "detector", **sizes}
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


def _describe_input(report: Dict[str, Any]) -> str:
    """Which input the counts are for, in words."""
    h, w = report["input_size"]
    requested = report["requested_image_size"]
    how = (
        "as --image-size gave it, no test resize" if requested else "480x640 after the test resize"
    )
    return (
        f"input: {h}x{w} image ({how}); the {report['model']} got a tensor of shape "
        f"{tuple(report['input_shape'])}"
    )


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["flop", "parameter"])
    add_image_size_argument(parser)
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
        loaded = load_model(
            args.config,
            args.weights,
            args.device,
            args.opts,
            trust_checkpoint=args.trust_checkpoint,
            trust_config=args.trust_config,
        )
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = analyze(loaded, args.tasks, args.image_size, args.backbone, args.max_depth)
    for task in args.tasks:
        print(f"\n== {task} ==\n{report[task]['table']}")
    print(_describe_input(report))
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
