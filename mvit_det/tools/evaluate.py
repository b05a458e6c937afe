"""COCO or LVIS AP of several configs + weights on one dataset, as one table.

Each ``--model CONFIG WEIGHTS`` (LazyConfig ``.py`` or yacs ``.yaml``) is evaluated on
``--dataset`` (default: each config's own test dataset) with Detectron2's COCOEvaluator, or its
LVISEvaluator for LVIS datasets (``lvis_v1_val``, ``--register-lvis``; needs the ``lvis``
package), using the config's test resize. Prints a Markdown table (box AP, mask AP, AP50/AP75,
images, ms per image: the model call alone, after ``--warmup`` calls) and writes it with the full
metrics as JSON and Markdown (``--output``).

Weights and YAML configs are read without running code from them unless ``--trust-checkpoint``
/ ``--trust-config`` is given (a ``.py`` LazyConfig is Python code and runs).

Examples:
  python tools/evaluate.py --dataset coco_2017_val \\
      --model mask_rcnn_mvitv2_t.py mask_rcnn_t/model_final.pth \\
      --model cascade_mask_rcnn_mvitv2_t.py cascade_t/model_final.pth \\
      --output output/coco_ap.json
  python tools/evaluate.py --register-coco mine ann.json images/ --dataset mine \\
      --model configs/yacs/mask_rcnn_mvitv2_b.yaml model_final.pkl MODEL.ROI_HEADS.NUM_CLASSES 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, inference_on_dataset

from ..data import (
    DatasetError,
    add_register_coco_argument,
    prepare_datasets,
    register_coco_dataset,
)
from ..data.lvis import is_lvis_dataset, register_lvis_dataset
from ..utils.file_io import atomic_write
from ..config.safe_yaml import add_trust_config_argument
from .loading import LoadedModel, ToolError, add_trust_checkpoint_argument, check_device
from .loading import load_model

__all__ = ["evaluate_model", "format_table", "main", "TimedModel"]


class TimedModel(torch.nn.Module):
    """Wraps a model and records the wall time of each call (device work included)."""

    def __init__(self, model: torch.nn.Module) -> None:
        """
        Args:
            model: the detector.
        """
        super().__init__()
        self.model = model
        self.calls: List[tuple] = []  # (seconds, images)

    def forward(self, inputs: List[Dict[str, Any]]) -> Any:
        cuda = next(self.model.parameters()).is_cuda
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = self.model(inputs)
        if cuda:
            torch.cuda.synchronize()
        self.calls.append((time.perf_counter() - start, len(inputs)))
        return outputs

    def ms_per_image(self, warmup: int) -> Optional[float]:
        """Mean milliseconds per image over the calls after the first ``warmup`` ones."""
        timed = self.calls[warmup:] or self.calls
        images = sum(n for _, n in timed)
        return 1000 * sum(t for t, _ in timed) / images if images else None


def evaluate_model(
    loaded: LoadedModel, dataset: str, output_dir: str, warmup: int = 5
) -> Dict[str, Any]:
    """
    COCO (or, for an LVIS dataset, LVIS) evaluation of one loaded model on one dataset.

    Args:
        loaded: the model and its preprocessing.
        dataset: a registered dataset name.
        output_dir: where the evaluator writes its files.
        warmup: model calls left out of the time per image.

    Returns:
        ``{"metrics": the evaluator's results, "images": n, "ms_per_image": t}``.
    """
    mapper = DatasetMapper(
        is_train=False, augmentations=loaded.augmentations, image_format=loaded.input_format
    )
    loader = build_detection_test_loader(
        dataset=get_detection_dataset_dicts(dataset, filter_empty=False), mapper=mapper
    )
    timed = TimedModel(loaded.model)
    evaluator_type = LVISEvaluator if is_lvis_dataset(dataset) else COCOEvaluator
    evaluator = evaluator_type(dataset, output_dir=output_dir)
    metrics = inference_on_dataset(timed, loader, evaluator)
    images = sum(n for _, n in timed.calls)
    return {
        "metrics": dict(metrics),
        "images": images,
        "ms_per_image": timed.ms_per_image(min(warmup, max(len(timed.calls) - 1, 0))),
    }


def _metric(row: Dict[str, Any], task: str, key: str) -> str:
    value = row["metrics"].get(task, {}).get(key)
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of box/mask AP and time per image, one row per evaluated model."""
    lines = [
        "| config | weights | dataset | images | box AP | box AP50 | box AP75 | mask AP "
        "| mask AP50 | mask AP75 | ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = "-" if row["ms_per_image"] is None else f"{row['ms_per_image']:.1f}"
        cells = [row["config"], row["weights"], row["dataset"], str(row["images"])]
        cells += [_metric(row, "bbox", k) for k in ("AP", "AP50", "AP75")]
        cells += [_metric(row, "segm", k) for k in ("AP", "AP50", "AP75")]
        lines.append("| " + " | ".join(cells + [ms]) + " |")
    return "\n".join(lines)


def _split_models(groups: List[List[str]]) -> List[Dict[str, Any]]:
    """``--model CONFIG WEIGHTS [overrides...]`` groups as dicts."""
    models = []
    for group in groups:
        if len(group) < 2:
            raise ToolError(
                f"--model {' '.join(group)}: give a config and weights, e.g. "
                "--model mask_rcnn_mvitv2_t.py model_final.pth (then optional overrides)"
            )
        models.append({"config": group[0], "weights": group[1], "opts": group[2:]})
    return models


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --model CONFIG WEIGHTS [OVERRIDE ...] [--model ...] [options]",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        action="append",
        required=True,
        metavar="ARG",
        help="CONFIG WEIGHTS [OVERRIDE ...]: a config, its weights, then optional overrides "
        "(key=value for LazyConfigs, KEY VALUE for yacs); repeat for each model",
    )
    parser.add_argument("--dataset", default="", help="registered dataset (default: the config's)")
    add_register_coco_argument(parser)
    parser.add_argument(
        "--register-lvis",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register an LVIS-format dataset under NAME (repeatable; evaluated with "
        "LVISEvaluator, which needs the lvis package)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=5, help="calls left out of the timing")
    parser.add_argument("--output", default="output/evaluation.json", help="JSON; .md beside it")
    add_trust_checkpoint_argument(parser)
    add_trust_config_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """
    Evaluates every ``--model`` of the command line.

    Args:
        args: from :func:`parse_args`.

    Returns:
        one row per model (config, weights, dataset, metrics, images, ms_per_image).

    Raises:
        ToolError: bad models, datasets, weights or device.
    """
    check_device(args.device)
    models = _split_models(args.model)
    try:
        for name, json_file, image_root in args.register_coco:
            register_coco_dataset(name, json_file, image_root)
        for name, json_file, image_root in args.register_lvis:
            register_lvis_dataset(name, json_file, image_root)
    except DatasetError as e:
        raise ToolError(str(e)) from None
    rows = []
    for entry in models:
        loaded = load_model(
            entry["config"],
            entry["weights"],
            args.device,
            entry["opts"],
            trust_checkpoint=args.trust_checkpoint,
            trust_config=args.trust_config,
        )
        dataset = args.dataset or loaded.dataset
        try:
            prepare_datasets([dataset])
        except DatasetError as e:
            raise ToolError(str(e)) from None
        print(f"evaluating {entry['config']} with {entry['weights']} on {dataset}", flush=True)
        with tempfile.TemporaryDirectory() as evaluator_dir:
            result = evaluate_model(loaded, dataset, evaluator_dir, args.warmup)
        rows.append({"config": entry["config"], "weights": entry["weights"], "dataset": dataset,
                     "opts": list(entry["opts"]), **result})  # fmt: skip
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """
    The command line: evaluates, prints the table, writes JSON and Markdown.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 bad arguments or files.
    """
    args = parse_args(argv)
    try:
        rows = run(args)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table(rows)
    print("\n" + table)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write(args.output, lambda f: f.write(json.dumps(rows, indent=2).encode()))
    markdown = os.path.splitext(args.output)[0] + ".md"
    atomic_write(markdown, lambda f: f.write((table + "\n").encode()))
    print(f"wrote {args.output} and {markdown}")
    return 0
