"""Training and evaluation with LazyConfigs, behind ``tools/lazyconfig_train_net.py``.

The command line is Detectron2's (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``key=value``
overrides) plus batch scaling (``--auto-scale``, ``--scale-batch-size``), gradient accumulation
(``--grad-accumulation``), custom datasets (``--register-coco``) and ``--trust-checkpoint``.

The config, the overrides and the datasets are checked before any process is started; a
problem gives one ``error:`` line and exit status 2. Training locks ``train.output_dir`` against
a second run, writes checkpoints atomically as plain data, never saves diverged (NaN/Inf)
weights, and resumes exactly: the data position and the random streams continue where the
checkpoint left them.
"""

import argparse
import copy
import json
import logging
import os
import sys
import warnings
from collections import OrderedDict
from contextlib import ExitStack, contextmanager, nullcontext
from logging.handlers import BufferingHandler
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import create_ddp_model, default_argument_parser, default_setup, hooks
from detectron2.engine import launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing import ProcessExitedException

from ..checkpoint import CheckpointError, MViTCheckpointer
from ..data import (
    DatasetError,
    dataset_names,
    prepare_datasets,
    register_coco_dataset,
    register_datasets_from_config,
)
from ..model_zoo import resolve_config_file
from ..utils.file_io import FileLockedError, atomic_write, file_lock, remove_stale_temp_files
from .overrides import ConfigOverrideError, apply_overrides_checked
from .scaling import auto_scale_recipe, micro_batch_size, scale_recipe
from .train_loader import DataLoadingError, ResumableTrainLoader
from .trainer import AccumulationTrainer

__all__ = [
    "UsageError",
    "build_argument_parser",
    "load_config",
    "setup",
    "training_output_dir",
    "build_train_loader",
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

# The lock file that keeps a second training run out of an output folder.
_LOCK_FILE = ".train.lock"
# Config values that must be integers of at least this much.
_MINIMUM_INTEGERS = {
    "train.max_iter": 1,
    "dataloader.train.total_batch_size": 1,
    "train.checkpointer.period": 1,
    "train.log_period": 1,
    "train.eval_period": 0,
    "train.grad_accumulation": 1,
}
AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Arguments of build_detection_train_loader that ResumableTrainLoader takes over.
_RESUMABLE_LOADER_ARGS = {
    "_target_",
    "dataset",
    "mapper",
    "total_batch_size",
    "num_workers",
    "aspect_ratio_grouping",
    "sampler",
}


class UsageError(RuntimeError):
    """A problem with the command line, the config or the data that the user must fix."""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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
        type=_positive_int,
        default=None,
        metavar="N",
        help="scale the recipe to N images per optimizer step, with the LR and schedule scaled "
        "as for --auto-scale",
    )
    parser.add_argument(
        "--grad-accumulation",
        type=_positive_int,
        default=None,
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
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints that pickle Python objects (besides tensors and plain data) to "
        "be unpickled in full; only for files from a trusted source, since unpickling can run "
        "arbitrary code",
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


def _check_values(cfg: DictConfig) -> None:
    """Checks the counts, the learning rate and the AMP precision of a training config."""
    for key, minimum in _MINIMUM_INTEGERS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < minimum
        ):
            raise UsageError(f"{key} must be an integer >= {minimum}, got {value!r}.")
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
        raise UsageError(f"optimizer.lr must be a positive number, got {lr!r}.")
    precision = cfg.train.get("amp", {}).get("precision", "float16")
    if precision not in AMP_PRECISIONS:
        raise UsageError(
            f"train.amp.precision must be one of {', '.join(AMP_PRECISIONS)}, got {precision!r}."
        )


def load_config(args: argparse.Namespace, world_size: int = 1) -> DictConfig:
    """Loads the config, applies the overrides, batch scaling, accumulation and device fallback,
    and checks the values.

    Args:
        args: parsed command line.
        world_size: number of training processes.

    Raises:
        UsageError: naming the config key or option at fault.
    """
    cfg = LazyConfig.load(_resolve_config_file(args.config_file))
    try:
        apply_overrides_checked(cfg, args.opts)
    except ConfigOverrideError as e:
        raise UsageError(str(e)) from None
    _check_values(cfg)
    try:
        if args.auto_scale:
            auto_scale_recipe(cfg, world_size)
        elif args.scale_batch_size is not None:
            scale_recipe(cfg, args.scale_batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.grad_accumulation is not None:
        cfg.train.grad_accumulation = args.grad_accumulation
    try:
        if not args.eval_only:
            micro_batch_size(
                cfg.dataloader.train.total_batch_size,
                int(cfg.train.get("grad_accumulation", 1)),
                world_size,
            )
        instantiate(cfg.lr_multiplier)
    except ValueError as e:
        message = str(e)
        if "multiple of" not in message:
            message = (
                f"The LR schedule does not fit train.max_iter={cfg.train.max_iter}: {e}. Set "
                "lr_multiplier.scheduler.milestones (iterations below train.max_iter) with it."
            )
        raise UsageError(message) from None
    if not torch.cuda.is_available() and str(cfg.train.get("device", "cuda")).startswith("cuda"):
        warnings.warn(
            "CUDA is not available: running on the CPU (slow) with mixed precision disabled.",
            stacklevel=2,
        )
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False
    return cfg


def _register_datasets(cfg: DictConfig, args: argparse.Namespace, check_content: bool) -> None:
    """Registers the config's and the command line's custom datasets and checks all used ones:
    their files, and with ``check_content`` their annotations and images."""
    num_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
    masks = OmegaConf.select(cfg, "dataloader.train.mapper.use_instance_mask", default=False)
    try:
        register_datasets_from_config(cfg.get("datasets") or {})
        for name, json_file, image_root in args.register_coco:
            register_coco_dataset(name, json_file, image_root)
        if not args.eval_only:
            prepare_datasets(
                dataset_names(cfg.dataloader.train.dataset.names),
                num_classes=num_classes,
                check_content=check_content,
                for_training=True,
                check_masks=bool(masks),
            )
        if "test" in cfg.dataloader:
            prepare_datasets(
                dataset_names(cfg.dataloader.test.dataset.names),
                num_classes=num_classes,
                check_content=check_content,
            )
    except (DatasetError, ValueError) as e:
        raise UsageError(str(e)) from None


@contextmanager
def _held_log_records(name: str = "mvit_det") -> Iterator[List[logging.LogRecord]]:
    """Keeps the records logged under ``name`` while the block runs (before logging is set up),
    to be replayed once it is."""
    log = logging.getLogger(name)
    handler = BufferingHandler(capacity=10_000)
    saved = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield handler.buffer
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def setup(args: argparse.Namespace) -> DictConfig:
    """Config, logging, output folder and datasets of one training process.

    Args:
        args: parsed command line.
    """
    with _held_log_records() as records:
        cfg = load_config(args, comm.get_world_size())
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mvit_det")
    for record in records:  # e.g. "Scaled the recipe ..."
        logging.getLogger(record.name).handle(record)
    _register_datasets(cfg, args, check_content=not getattr(args, "datasets_checked", False))
    return cfg


@contextmanager
def training_output_dir(path: str) -> Iterator[None]:
    """Creates ``path``, locks it against a second training run for the duration of the block,
    and removes the temporary files of writes killed earlier.

    Args:
        path: the run's ``train.output_dir``.

    Raises:
        UsageError: the folder cannot be created or written, or another run holds it.
    """
    with ExitStack() as stack:
        try:
            os.makedirs(path, exist_ok=True)
            stack.enter_context(file_lock(os.path.join(path, _LOCK_FILE), blocking=False))
        except FileLockedError as e:
            raise UsageError(
                f"the output directory {path!r} (train.output_dir) is in use by another training "
                f"run (process {e.holder or '?'}); wait for it to end, stop it, or choose another "
                "train.output_dir"
            ) from None
        except OSError as e:
            raise UsageError(
                f"cannot write to the output directory {path!r} (train.output_dir): {e}"
            ) from None
        removed = remove_stale_temp_files(path)
        if removed:
            logger.info(f"Removed {len(removed)} temporary files of interrupted writes in {path}")
        yield


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


def build_train_loader(cfg: DictConfig, total_batch_size: int, seed: int) -> Any:
    """The training loader of ``cfg.dataloader.train`` with ``total_batch_size`` images per
    batch over all processes.

    Detectron2's ``build_detection_train_loader`` with its default sampler becomes a
    :class:`ResumableTrainLoader` (same dataset, mapper, workers and aspect-ratio grouping), whose
    position is saved in checkpoints; any other loader is instantiated as configured, and a
    resumed run restarts its data order.

    Args:
        cfg: the config.
        total_batch_size: images per batch (one micro-batch), all processes together.
        seed: base seed of the data order and augmentation.
    """
    loader_cfg = copy.deepcopy(cfg.dataloader.train)
    target = loader_cfg._target_
    target = locate(target) if isinstance(target, str) else target
    if (
        target is build_detection_train_loader
        and set(loader_cfg.keys()) <= _RESUMABLE_LOADER_ARGS
        and loader_cfg.get("sampler") is None
    ):
        mapper = instantiate(loader_cfg.mapper) if loader_cfg.get("mapper") else None
        return ResumableTrainLoader(
            instantiate(loader_cfg.dataset),
            mapper if mapper is not None else (lambda record: record),
            total_batch_size // comm.get_world_size(),
            seed,
            aspect_ratio_grouping=loader_cfg.get("aspect_ratio_grouping", True),
            num_workers=loader_cfg.get("num_workers", 0),
        )
    logger.warning(
        "dataloader.train is not Detectron2's build_detection_train_loader with its default "
        "sampler: its position is not saved, so a resumed run restarts its data order."
    )
    loader_cfg.total_batch_size = total_batch_size
    return instantiate(loader_cfg)


def _wrap_ddp(model: torch.nn.Module, **ddp_options: Any) -> torch.nn.Module:
    """DistributedDataParallel with several processes (the model as is with one); on the CPU
    (gloo) without device ids and without fp16 gradient compression."""
    if next(model.parameters()).device.type == "cpu":
        ddp_options.update(device_ids=None, fp16_compression=False)
    return create_ddp_model(model, **ddp_options)


def _drop_metrics_after(path: str, iteration: int) -> None:
    """Removes the records of iterations after ``iteration`` (and any cut-off last line) from a
    metrics.json that an interrupted run wrote, so that the resumed run does not repeat them."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("iteration", -1) <= iteration:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def do_train(
    cfg: DictConfig,
    resume: bool = False,
    model: Optional[torch.nn.Module] = None,
    trust_checkpoint: bool = False,
) -> OrderedDict:
    """Trains the model with periodic checkpoints, evaluation and metric writers.

    Args:
        cfg: the config.
        resume: continue from the last checkpoint in ``train.output_dir`` if there is one.
        model: the detector to train (on ``train.device``); default: built from ``cfg.model``.
        trust_checkpoint: unpickle ``train.init_checkpoint`` in full if it needs that.

    Returns:
        the results of the last evaluation.

    Raises:
        UsageError: the checkpoint cannot be loaded, or the batch does not split.
        FloatingPointError: training diverged; the message names the last good checkpoint.
    """
    if model is None:
        model = instantiate(cfg.model)
        logger.info(f"Model:\n{model}")
        model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)

    accumulation = int(cfg.train.get("grad_accumulation", 1))
    try:
        batch = micro_batch_size(
            cfg.dataloader.train.total_batch_size, accumulation, comm.get_world_size()
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    seed = int(cfg.train.seed) if cfg.train.get("seed", -1) >= 0 else comm.shared_random_seed()
    train_loader = build_train_loader(cfg, batch, seed)

    model = _wrap_ddp(model, **cfg.train.ddp)
    amp = cfg.train.amp
    trainer = AccumulationTrainer(
        model,
        train_loader,
        optimizer,
        accumulation_steps=accumulation,
        amp=amp.enabled,
        amp_dtype=AMP_PRECISIONS[amp.get("precision", "float16")],
        seed=seed,
    )
    checkpointer = MViTCheckpointer(
        model, cfg.train.output_dir, trust=trust_checkpoint, trainer=trainer
    )
    eval_results: OrderedDict = OrderedDict()

    def evaluate() -> Dict[str, Any]:
        eval_results.clear()
        eval_results.update(do_test(cfg, model))
        return eval_results

    checkpoint_options = dict(cfg.train.checkpointer)
    if not comm.is_main_process():
        # Every rank takes part in collecting the state; the main process writes and prunes.
        checkpoint_options["max_to_keep"] = None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **checkpoint_options),
            hooks.EvalHook(cfg.train.eval_period, evaluate),
        ]
    )
    try:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        logger.info(f"Resuming from iteration {start_iter}")
    if comm.is_main_process():
        metrics = os.path.join(cfg.train.output_dir, "metrics.json")
        if start_iter:
            _drop_metrics_after(metrics, start_iter - 1)
        writers = [
            CommonMetricPrinter(cfg.train.max_iter),
            JSONWriter(metrics),
            TensorboardXWriter(cfg.train.output_dir, purge_step=start_iter or None),
        ]
        trainer.register_hooks([hooks.PeriodicWriter(writers, period=cfg.train.log_period)])
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except FloatingPointError as e:
        if str(e).startswith("not saving"):
            raise  # the checkpointer's message already names the last good checkpoint
        last = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
        raise FloatingPointError(
            f"training diverged: {str(e).splitlines()[0]} "
            + (
                f"The last good checkpoint is {last}: resume from it (--resume) with a lower "
                "optimizer.lr or a longer warmup."
                if last
                else "No checkpoint was saved before; lower optimizer.lr or lengthen the warmup."
            )
        ) from None
    return eval_results


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """One training process: evaluates (``--eval-only``) or trains.

    Args:
        args: parsed command line.

    Returns:
        the (last) evaluation results.
    """
    cfg = setup(args)
    local_processes = comm.get_local_size()
    if cfg.train.device == "cpu" and local_processes > 1:
        # Processes sharing the machine's cores: one share each, not all of them each.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    trust = getattr(args, "trust_checkpoint", False)
    if not args.eval_only:
        return do_train(cfg, resume=args.resume, trust_checkpoint=trust)
    if not cfg.train.init_checkpoint:
        logger.warning("--eval-only without train.init_checkpoint evaluates a random model.")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = _wrap_ddp(model)
    try:
        MViTCheckpointer(model, trust=trust).load(cfg.train.init_checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    return do_test(cfg, model)


def _exit_status(error: BaseException) -> Optional[int]:
    """The exit status for an error that ends a run with an ``error:`` line; None for others
    (they keep their traceback)."""
    if isinstance(error, FloatingPointError):
        return 1
    if isinstance(error, (UsageError, CheckpointError, DataLoadingError, OSError)):
        return 2
    return None


def _main_reporting_errors(args: argparse.Namespace) -> None:
    """:func:`main` for :func:`run_cli`: a known error prints one ``error:`` line and exits the
    process with its status (a spawned process's status reaches the parent)."""
    try:
        main(args)
    except Exception as e:
        status = _exit_status(e)
        if status is None:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(status)


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command-line entry point: checks the config, overrides and datasets, locks the output
    folder, launches the processes and reports errors.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        the process exit status: 0, 1 when training diverged, 2 for usage, data and file errors.
    """
    args = build_argument_parser().parse_args(argv)
    if not torch.cuda.is_available() and args.num_gpus > 1:
        warnings.warn(
            f"CUDA is not available: running {args.num_gpus} training processes on the CPU "
            "(gloo backend).",
            stacklevel=2,
        )
    world_size = args.num_gpus * args.num_machines
    try:
        if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
            raise UsageError(
                f"--num-gpus {args.num_gpus} asks for more GPUs than this machine has "
                f"({torch.cuda.device_count()})."
            )
        cfg = load_config(args, world_size)
        _register_datasets(cfg, args, check_content=True)
        args.datasets_checked = True
        owns_output = not args.eval_only and args.machine_rank == 0
        with training_output_dir(cfg.train.output_dir) if owns_output else nullcontext():
            launch(
                _main_reporting_errors,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # from _main_reporting_errors in this process
        return int(e.code or 0)
    except ProcessExitedException as e:  # a spawned process reported its error and exited
        return e.exit_code if e.exit_code > 0 else 1
    return 0
