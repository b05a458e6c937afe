"""The embedded demo: a small MViTv2 (or ViL) Mask R-CNN learns the synthetic shapes dataset on
the CPU.

Generates the dataset if absent (``$DETECTRON2_DATASETS/mvit_shapes``), evaluates the freshly
initialised model on ``shapes_val`` with Detectron2's COCOEvaluator, trains it with
configs/demo/mask_rcnn_mvitv2_shapes.py (``--backbone vil``:
projects/ViL/configs/demo/mask_rcnn_vil_shapes.py; both LSJ at 192 px), evaluates it again,
prints the bbox and segm AP before and after, and writes visualised validation predictions as PNG
files. Training draws its losses, learning rate and AP into ``metrics.png`` in the output folder;
the demo prints where both kinds of pictures are.

    python tools/demo.py [--backbone {mvit,vil}] [--output-dir DIR] [--num-vis N] [key=value ...]

Trailing ``key=value`` pairs override the config (e.g. ``train.max_iter=300``). A shorter or
longer ``train.max_iter`` keeps the shape of the LR schedule: unless they are overridden too, the
LR milestones scale with it (500 and 570 of 600 iterations become 250 and 285 of 300), as does
the warmup (a fraction of the schedule).
"""

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils
from detectron2.utils.visualizer import Visualizer

from ..engine.metrics_plot import METRICS_PICTURE
from ..engine.overrides import ConfigOverrideError, apply_overrides_checked
from ..engine.train_net import UsageError, build_argument_parser, do_test, do_train, setup
from ..engine.train_net import load_config, scaled_milestones, training_output_dir
from ..model_zoo import get_config, get_config_file
from ..utils.file_io import atomic_write

DEMO_CONFIGS = {
    "mvit": "demo/mask_rcnn_mvitv2_shapes.py",
    "vil": "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py",
}


def schedule_overrides(config: str, opts: List[str]) -> List[str]:
    """The override of the LR milestones that keeps their place in the schedule when ``opts``
    change ``train.max_iter`` but not the milestones; empty otherwise.

    Args:
        config: the demo config (a model-zoo name).
        opts: the command line's ``key=value`` overrides.
    """
    keys = {o.split("=", 1)[0].lstrip("+~") for o in opts}
    if "train.max_iter" not in keys or "lr_multiplier.scheduler.milestones" in keys:
        return []
    cfg = get_config(config)
    recipe_max_iter = cfg.train.max_iter
    recipe_milestones = list(cfg.lr_multiplier.scheduler.milestones)
    try:
        apply_overrides_checked(cfg, opts)
    except ConfigOverrideError:
        return []  # reported when the config is loaded
    scaled = scaled_milestones(recipe_milestones, recipe_max_iter, cfg.train.max_iter)
    if scaled is None:
        return []
    print(
        f"LR milestones {recipe_milestones} of {recipe_max_iter} iterations scaled to {scaled} "
        f"for train.max_iter={cfg.train.max_iter}.",
        flush=True,
    )
    return [f"lr_multiplier.scheduler.milestones=[{','.join(map(str, scaled))}]"]


def _ap_table(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    """A Markdown table of AP / AP50 / AP75 per task, before and after training."""
    rows = ["| task | AP before | AP after | AP50 after | AP75 after |", "|---|---|---|---|---|"]
    for task in ("bbox", "segm"):
        b, a = before.get(task, {}), after.get(task, {})
        rows.append(
            f"| {task} | {b.get('AP', float('nan')):.1f} | {a.get('AP', float('nan')):.1f} "
            f"| {a.get('AP50', float('nan')):.1f} | {a.get('AP75', float('nan')):.1f} |"
        )
    return "\n".join(rows)


@torch.no_grad()
def write_visualisations(
    model: torch.nn.Module, dataset_name: str, cfg: Any, out_dir: str, num_images: int
) -> List[str]:
    """Draws ground truth (left) and predictions with score >= 0.5 (right) of the first
    validation images into PNG files.

    Args:
        model: the trained detector.
        dataset_name: a registered dataset.
        cfg: the config (for the test mapper).
        out_dir: output folder.
        num_images: number of images to draw.

    Returns:
        the written file paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    mapper = instantiate(cfg.dataloader.test.mapper)
    model.eval()
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = detection_utils.read_image(record["file_name"], format="RGB")  # (H, W, 3)
        instances = model([mapper(record)])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= 0.5]
        gt = Visualizer(image, metadata, scale=2.0).draw_dataset_dict(record).get_image()
        pred = Visualizer(image, metadata, scale=2.0).draw_instance_predictions(instances)
        canvas = np.concatenate([gt, pred.get_image()], axis=1)  # (2H, 4W, 3) RGB
        path = os.path.join(
            out_dir, f"{os.path.splitext(os.path.basename(record['file_name']))[0]}.png"
        )
        cv2.imwrite(path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", choices=sorted(DEMO_CONFIGS), default="mvit", help="MViTv2 or ViL"
    )
    parser.add_argument(
        "--output-dir",
        help="train.output_dir (default ./output/demo_shapes, ./output/demo_shapes_vil for ViL)",
    )
    parser.add_argument("--num-vis", type=int, default=6, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.num_vis < 0:
        parser.error(f"--num-vis must be >= 0, got {args.num_vis}")

    start = time.perf_counter()
    output_dir = args.output_dir or (
        "./output/demo_shapes" if args.backbone == "mvit" else "./output/demo_shapes_vil"
    )
    opts = args.opts + schedule_overrides(DEMO_CONFIGS[args.backbone], args.opts)
    train_args = build_argument_parser().parse_args(
        ["--config-file", get_config_file(DEMO_CONFIGS[args.backbone])]
        + [f"train.output_dir={output_dir}"]
        + opts
    )
    with ExitStack() as stack:
        try:
            # Checks the overrides, then the output folder, before the dataset is generated.
            cfg = load_config(train_args)
            stack.enter_context(training_output_dir(cfg.train.output_dir))
            cfg = setup(train_args)  # also generates the dataset if it is absent
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            return _run_demo(cfg, args.num_vis, start)
        except (OSError, FloatingPointError) as e:  # a full disk, a diverged run
            print(f"error: {e}", file=sys.stderr)
            return 2 if isinstance(e, OSError) else 1


def _run_demo(cfg: Any, num_vis: int, start: float) -> int:
    """Evaluates, trains, evaluates again, draws and reports (see the module's docstring).

    Args:
        cfg: the demo config, set up.
        num_vis: validation images to draw.
        start: ``time.perf_counter()`` when the demo started.

    Returns:
        the exit status.
    """
    model = instantiate(cfg.model).to(cfg.train.device)

    print("Evaluating the untrained model on shapes_val ...", flush=True)
    before = do_test(cfg, model)
    t_train = time.perf_counter()
    train_started = time.time()  # wall clock, to tell this run's picture from an earlier one
    after = do_train(cfg, model=model)
    train_minutes = (time.perf_counter() - t_train) / 60

    vis_dir = os.path.join(cfg.train.output_dir, "visualizations")
    paths = write_visualisations(model, "shapes_val", cfg, vis_dir, num_vis)
    total_minutes = (time.perf_counter() - start) / 60
    summary = {
        "before": before,
        "after": after,
        "train_iterations": cfg.train.max_iter,
        "train_minutes": round(train_minutes, 2),
        "total_minutes": round(total_minutes, 2),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write(
        os.path.join(cfg.train.output_dir, "demo_results.json"),
        lambda f: f.write(json.dumps(summary, indent=2).encode()),
    )
    print(
        f"\nCOCO AP on shapes_val, {cfg.train.max_iter} iterations in {train_minutes:.1f} min "
        f"(whole demo {total_minutes:.1f} min):"
    )
    print(_ap_table(before, after))
    print(f"\nVisualisations: {', '.join(paths) or 'none (--num-vis 0)'}")
    curves = os.path.join(cfg.train.output_dir, METRICS_PICTURE)
    # 2 s of slack for file systems that keep modification times in whole seconds
    if os.path.isfile(curves) and os.path.getmtime(curves) >= train_started - 2:
        print(f"Training curves (losses, learning rate, AP): {curves}")
    else:
        print(f"Training curves: {curves} could not be drawn (see the log)")
    return 0
