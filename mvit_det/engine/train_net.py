"""Training and evaluation with LazyConfigs, behind ``tools/lazyconfig_train_net.py``.

The command line is Detectron2's (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``key=value``
overrides) plus batch scaling (``--auto-scale``, ``--scale-batch-size``), gradient accumulation
(``--grad-accumulation``) and custom datasets (``--register-coco``).
"""

import argparse
import copy
import logging
import os
import sys
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import create_ddp_model, default_argument_parser, default_setup, hooks
from detectron2.engine import default_writers, launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig

from ..checkpoint import CheckpointError, MViTCheckpointer
from ..data import (
    DatasetError,
    dataset_names,
    prepare_datasets,
    register_coco_dataset,
    register_datasets_from_config,
)
from ..model_zoo import resolve_config_file
from .overrides import ConfigOverrideError, apply_overrides_checked
from .scaling import auto_scale_recipe, micro_batch_size, scale_recipe
from .trainer import AccumulationTrainer

__all__ = [
    "build_argument_parser",
    "load_config",
    "setup",
    "do_train",
    "do_test",
    "main",
    "run_cli",
]

logger = logging.getLogger(__name__)

_EPILOG = """examples:
  single machine, 8 GPUs, the recipe's 64 images per step via gradient accumulation:
    %(prog)s --config-file configs/mask_rcnn_mvitv2_b.py --num-gpus 8 --grad-accumulation 8
  one GPU, batch 16 with the LR and schedule scaled linearly from the recipe:
    %(prog)s --config-file configs/mask_rcnn_mvitv2_t.py --scale-batch-size 16
  evaluate published weights:
    %(prog)s --config-file configs/mask_rcnn_mvitv2_t.py --eval-only train.init_checkpoint=PATH
  resume an interrupted run from its last checkpoint:
    %(prog)s --config-file configs/mask_rcnn_mvitv2_b.py --resume
"""


class UsageError(RuntimeError):
    """A problem with the command line, the config or the data that the user must fix."""


def build_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus the options of this tool."""
    parser = default_argument_parser(epilog=_EPILOG)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--auto-scale",
        action="store_true",
        help="scale the batch (keeping images per GPU), the LR (linearly) and the schedule "
        "(iterations, warmup, LR milestones, eval and checkpoint periods, inversely) from the "
        "recipe's train.reference_world_size GPUs to the number of GPUs used",
    )
    scale.add_argument(
        "--scale-batch-size",
        type=int,
        default=0,
        metavar="N",
        help="scale the recipe to N images per optimizer step, with the LR and schedule scaled "
        "as for --auto-scale",
    )
    parser.add_argument(
        "--grad-accumulation",
        type=int,
        default=0,
        metavar="K",
        help="accumulate gradients over K micro-batches of total_batch_size / K images per "
        "optimizer step (sets train.grad_accumulation); LR and schedule are unchanged",
    )
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable); use it with e.g. "
        "dataloader.train.dataset.names=NAME",
    )
    return parser


def _resolve_config_file(config_file: str) -> str:
    if not config_file:
        raise UsageError(
            "--config-file is required, e.g. --config-file configs/mask_rcnn_mvitv2_b.py"
        )
    try:
        return resolve_config_file(config_file)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


def load_config(args: argparse.Namespace, world_size: int = 1) -> DictConfig:
    """Loads the config, applies the overrides, batch scaling, accumulation and device fallback.

    Args:
        args: parsed command line.
        world_size: number of training processes.
    """
    cfg = LazyConfig.load(_resolve_config_file(args.config_file))
    try:
        apply_overrides_checked(cfg, args.opts)
    except ConfigOverrideError as e:
        raise UsageError(str(e)) from None
    try:
        if args.auto_scale:
            auto_scale_recipe(cfg, world_size)
        elif args.scale_batch_size:
            scale_recipe(cfg, args.scale_batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.grad_accumulation:
        cfg.train.grad_accumulation = args.grad_accumulation
    try:
        instantiate(cfg.lr_multiplier)
    except ValueError as e:
        raise UsageError(
            f"The LR schedule does not fit train.max_iter={cfg.train.max_iter}: {e}. Set "
            "lr_multiplier.scheduler.milestones (iterations below train.max_iter) with it."
        ) from None
    if not torch.cuda.is_available() and str(cfg.train.get("device", "cuda")).startswith("cuda"):
        warnings.warn(
            "CUDA is not available: running on the CPU (slow) with mixed precision disabled.",
            stacklevel=2,
        )
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False
    return cfg


def _register_datasets(cfg: DictConfig, args: argparse.Namespace) -> None:
    """Registers the config's and the command line's custom datasets and checks all used ones."""
    try:
        register_datasets_from_config(cfg.get("datasets") or {})
        for name, json_file, image_root in args.register_coco:
            register_coco_dataset(name, json_file, image_root)
        names: List[str] = []
        if not args.eval_only:
            names += dataset_names(cfg.dataloader.train.dataset.names)
        if "test" in cfg.dataloader:
            names += dataset_names(cfg.dataloader.test.dataset.names)
        prepare_datasets(names)  # generating the synthetic dataset is safe on every rank at once
    except (DatasetError, ValueError) as e:
        raise UsageError(str(e)) from None


def setup(args: argparse.Namespace) -> DictConfig:
    """Config, logging, output folder and datasets of one training process.

    Args:
        args: parsed command line.
    """
    cfg = load_config(args, comm.get_world_size())
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mvit_det")
    _register_datasets(cfg, args)
    return cfg


def do_test(cfg: DictConfig, model: torch.nn.Module) -> Dict[str, Any]:
    """Runs ``dataloader.test`` through the model and ``dataloader.evaluator``.

    Args:
        cfg: the config.
        model: the detector.

    Returns:
        the evaluator's results, e.g. ``{"bbox": {"AP": ...}, "segm": {...}}``; empty without an
        evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator_cfg = copy.deepcopy(cfg.dataloader.evaluator)
    if "output_dir" not in evaluator_cfg:
        evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(evaluator_cfg)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(
    cfg: DictConfig, resume: bool = False, model: Optional[torch.nn.Module] = None
) -> OrderedDict:
    """Trains the model with periodic checkpoints, evaluation and metric writers.

    Args:
        cfg: the config.
        resume: continue from the last checkpoint in ``train.output_dir`` if there is one.
        model: the detector to train (on ``train.device``); default: built from ``cfg.model``.

    Returns:
        the results of the last evaluation.
    """
    if model is None:
        model = instantiate(cfg.model)
        logger.info(f"Model:\n{model}")
        model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)

    accumulation = int(cfg.train.get("grad_accumulation", 1))
    loader_cfg = copy.deepcopy(cfg.dataloader.train)
    try:
        loader_cfg.total_batch_size = micro_batch_size(
            cfg.dataloader.train.total_batch_size, accumulation, comm.get_world_size()
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    train_loader = instantiate(loader_cfg)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = AccumulationTrainer(
        model,
        train_loader,
        optimizer,
        accumulation_steps=accumulation,
        amp=cfg.train.amp.enabled,
    )
    checkpointer = MViTCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    eval_results: OrderedDict = OrderedDict()

    def evaluate() -> Dict[str, Any]:
        eval_results.clear()
        eval_results.update(do_test(cfg, model))
        return eval_results

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    try:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        logger.info(f"Resuming from iteration {start_iter}")
    trainer.train(start_iter, cfg.train.max_iter)
    return eval_results


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """One training process: evaluates (``--eval-only``) or trains.

    Args:
        args: parsed command line.

    Returns:
        the (last) evaluation results.
    """
    cfg = setup(args)
    if not args.eval_only:
        return do_train(cfg, resume=args.resume)
    if not cfg.train.init_checkpoint:
        logger.warning("--eval-only without train.init_checkpoint evaluates a random model.")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    try:
        MViTCheckpointer(model).load(cfg.train.init_checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    return do_test(cfg, model)


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command-line entry point: parses, launches the processes and reports usage errors.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        the process exit status.
    """
    args = build_argument_parser().parse_args(argv)
    if not torch.cuda.is_available() and args.num_gpus > 1:
        warnings.warn(
            f"CUDA is not available: running one process on the CPU instead of {args.num_gpus}.",
            stacklevel=2,
        )
        args.num_gpus = 1
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
