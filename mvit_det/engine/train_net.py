"""Training and evaluation with LazyConfigs, behind ``tools/lazyconfig_train_net.py``.

The command line is Detectron2's (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``key=value``
overrides) plus batch scaling (``--auto-scale``, ``--scale-batch-size``), gradient accumulation
(``--grad-accumulation``), custom datasets (``--register-coco``) and ``--trust-checkpoint``.

The config, the overrides, the backbone's arguments and the datasets are checked before any
process is started; a problem gives one ``error:`` line and exit status 2. Training locks
``train.output_dir`` against a second run (the training processes hold the lock with the
launcher, and die with it), writes checkpoints atomically as plain data, never saves diverged
(NaN/Inf) weights, and resumes exactly: the data position, the random streams and the smoothed
metrics continue where the checkpoint left them, and an ``optimizer.lr`` given on resuming
replaces the checkpoint's. A log, ``metrics.json`` or checkpoint that cannot be written (a full
disk) ends the run with one ``error:`` line naming the file, exit status 2. ``metrics.png`` in the
output folder shows the losses, the LR and the evaluation AP, drawn after each evaluation and at
the end.
"""

import argparse
import copy
import ctypes
import fcntl
import functools
import inspect
import json
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections import OrderedDict
from contextlib import ExitStack, contextmanager, nullcontext
from logging.handlers import BufferingHandler
from multiprocessing import reduction
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import create_ddp_model, default_argument_parser, default_setup, hooks
from detectron2.engine import launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.multiprocessing import ProcessExitedException

from ..checkpoint import BackboneCheckpointer, CheckpointError
from ..data import (
    DatasetError,
    add_register_coco_argument,
    dataset_names,
    prepare_datasets,
    register_coco_dataset,
    register_datasets_from_config,
)
from ..config.safe_yaml import UnsafeConfigError, add_trust_config_argument, load_lazy_config
from ..model_zoo import resolve_config_file
from ..config.lazy import backbone_nodes
from ..utils.file_io import FileLockedError, atomic_write, remove_stale_temp_files
from .metrics_plot import METRICS_PICTURE, PlotMetricsHook
from .overrides import ConfigOverrideError, apply_overrides_checked
from .scaling import auto_scale_recipe, micro_batch_size, scale_recipe
from .train_loader import DataLoadingError, ResumableTrainLoader
from .trainer import AccumulationTrainer

__all__ = [
    "OutputLock",
    "UsageError",
    "build_argument_parser",
    "load_config",
    "setup",
    "scaled_milestones",
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
# Loggers whose handlers write the run's log files (Detectron2's default_setup and ours).
_LOGGERS = ("fvcore", "detectron2", "mvit_det")
# linux/prctl.h: the signal a process receives when its parent ends.
_PR_SET_PDEATHSIG = 1
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
    add_register_coco_argument(parser)
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints that pickle Python objects (besides tensors and plain data) to "
        "be unpickled in full; only for files from a trusted source, since unpickling can run "
        "arbitrary code",
    )
    add_trust_config_argument(parser)
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
    if lr is not None and not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        finite = not _is_number(lr) or math.isfinite(lr)
        raise UsageError(
            f"optimizer.lr must be a positive number, got {lr!r}"
            + ("." if finite else ", which is not finite.")
        )
    for key in ("optimizer.weight_decay", "optimizer.params.weight_decay_norm"):
        decay = OmegaConf.select(cfg, key, default=None)
        if decay is not None and not (_is_number(decay) and math.isfinite(decay) and decay >= 0):
            raise UsageError(f"{key} must be a finite number >= 0, got {decay!r}.")
    warmup = OmegaConf.select(cfg, "lr_multiplier.warmup_length", default=None)
    if warmup is not None and not (_is_number(warmup) and 0 <= warmup <= 1):
        max_iter = cfg.train.max_iter
        raise UsageError(
            f"lr_multiplier.warmup_length={warmup!r} is the warmup's fraction of the schedule and "
            f"must be in [0, 1]"
            + (
                f": {warmup * max_iter:g} warmup iterations do not fit train.max_iter={max_iter}"
                if _is_number(warmup) and warmup > 1
                else ""
            )
            + f". For N warmup iterations set lr_multiplier.warmup_length=N/{max_iter} (e.g. "
            f"{min(250, max_iter) / max_iter:.4g})."
        )
    precision = cfg.train.get("amp", {}).get("precision", "float16")
    if precision not in AMP_PRECISIONS:
        raise UsageError(
            f"train.amp.precision must be one of {', '.join(AMP_PRECISIONS)}, got {precision!r}."
        )


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_backbone_args(cfg: DictConfig) -> None:
    """Runs the argument checks of the config's backbones (``check_args`` of their families),
    without building them.

    Raises:
        UsageError: naming the config node and the argument at fault.
    """
    for key, node, target, family in backbone_nodes(cfg):
        try:
            values = OmegaConf.to_container(node, resolve=True)
            values.pop("_target_")
            arguments = inspect.signature(target).bind(**values)
        except Exception:
            continue  # an argument the backbone does not take: instantiate names it
        arguments.apply_defaults()
        check = family.check_args
        accepted = inspect.signature(check).parameters
        try:
            check(**{k: v for k, v in arguments.arguments.items() if k in accepted})
        except (TypeError, ValueError) as e:
            raise UsageError(f"{key} ({target.__name__}): {e}.") from None


def _build_model(cfg: DictConfig) -> torch.nn.Module:
    """``cfg.model``, built; an argument the model refuses is a :class:`UsageError`."""
    try:
        return instantiate(cfg.model)
    except ValueError as e:
        raise UsageError(f"cannot build the model of the config (model): {e}") from None


def load_config(args: argparse.Namespace, world_size: int = 1) -> DictConfig:
    """Loads the config, applies the overrides, batch scaling, accumulation and device fallback,
    and checks the values.

    Args:
        args: parsed command line.
        world_size: number of training processes.

    Raises:
        UsageError: naming the config key or option at fault.
    """
    # A shipped name (e.g. published/mask_rcnn_mvitv2_t_3x.py) becomes its file, also for
    # Detectron2's default_setup, which logs the file's contents.
    args.config_file = _resolve_config_file(args.config_file)
    try:
        cfg = load_lazy_config(args.config_file, trust=getattr(args, "trust_config", False))
    except UnsafeConfigError as e:
        raise UsageError(str(e)) from None
    recipe_max_iter = OmegaConf.select(cfg, "train.max_iter", default=None)
    recipe_milestones = OmegaConf.select(cfg, "lr_multiplier.scheduler.milestones", default=None)
    try:
        apply_overrides_checked(cfg, args.opts)
    except ConfigOverrideError as e:
        raise UsageError(str(e)) from None
    _check_values(cfg)
    _check_backbone_args(cfg)
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
            scaled = scaled_milestones(recipe_milestones, recipe_max_iter, cfg.train.max_iter)
            message = (
                f"The LR schedule does not fit train.max_iter={cfg.train.max_iter}: {e}. Set "
                "lr_multiplier.scheduler.milestones (iterations below train.max_iter) with it"
                + (
                    f", e.g. lr_multiplier.scheduler.milestones=[{','.join(map(str, scaled))}] "
                    f"(the recipe's {list(recipe_milestones)} of {recipe_max_iter} iterations, "
                    "scaled)."
                    if scaled
                    else "."
                )
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


def scaled_milestones(milestones: Any, max_iter: Any, new_max_iter: int) -> Optional[List[int]]:
    """LR milestones of a schedule of ``max_iter`` iterations, scaled to ``new_max_iter``; None
    when they cannot be scaled (not a list of iterations, or not below ``new_max_iter`` once
    scaled).

    Args:
        milestones: the recipe's milestones.
        max_iter: the recipe's number of iterations.
        new_max_iter: the new number of iterations.
    """
    if not (isinstance(milestones, (list, tuple, ListConfig)) and milestones):
        return None
    if not (_is_number(max_iter) and max_iter > 0 and all(_is_number(m) for m in milestones)):
        return None
    scaled = [max(1, round(m * new_max_iter / max_iter)) for m in milestones]
    if any(b <= a for a, b in zip(scaled, scaled[1:])) or scaled[-1] >= new_max_iter:
        return None
    return scaled


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


def _write_error(path: str, error: OSError) -> OSError:
    """``error`` (a failed write) as an OSError naming ``path``, as atomic writes report it."""
    return OSError(error.errno, f"cannot write {path!r}: {error.strerror or error}")


def _discard_writes(stream: IO) -> None:
    """Points the descriptor of a file whose writes fail at the null device, so that its pending
    data, later writes and closing it (at exit) no longer fail."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class _LogFileErrors:
    """Failed writes of the run's log files (a full disk): the first is kept and raised by
    :meth:`check` as an OSError naming the file; the file's later writes are discarded."""

    def __init__(self) -> None:
        self.error: Optional[OSError] = None
        self._handlers: Dict[logging.Handler, str] = {}

    def watch(self, output_dir: str) -> None:
        """Watches the handlers of :data:`_LOGGERS` that write files in ``output_dir``.

        Args:
            output_dir: the run's ``train.output_dir``.
        """
        self.error = None
        self._handlers = {}
        folder = os.path.abspath(output_dir)
        for name in _LOGGERS:
            for handler in logging.getLogger(name).handlers:
                path = getattr(getattr(handler, "stream", None), "name", None)
                if isinstance(path, str) and os.path.dirname(os.path.abspath(path)) == folder:
                    self._handlers[handler] = path
                    handler.handleError = functools.partial(self._failed, handler)

    def _failed(self, handler: logging.Handler, record: logging.LogRecord) -> None:
        """``handleError`` of the watched handlers."""
        error = sys.exc_info()[1]
        if handler not in self._handlers or not isinstance(error, OSError):
            logging.Handler.handleError(handler, record)
            return
        self._fail(handler, error)

    def _fail(self, handler: logging.Handler, error: OSError) -> None:
        if self.error is None:
            self.error = _write_error(self._handlers[handler], error)
        _discard_writes(handler.stream)

    def check(self) -> None:
        """Flushes the watched log files.

        Raises:
            OSError: a write failed, naming the file and the errno.
        """
        for handler in list(self._handlers):
            try:
                handler.flush()
            except OSError as e:
                self._fail(handler, e)
        if self.error is not None:
            raise self.error


_LOG_FILES = _LogFileErrors()


@contextmanager
def _log_errors_deferred() -> Iterator[None]:
    """Keeps the logging module from printing a traceback for every record it fails to write
    while the log files are opened; :meth:`_LogFileErrors.check` reports the failure."""
    saved = logging.raiseExceptions
    logging.raiseExceptions = False
    try:
        yield
    finally:
        logging.raiseExceptions = saved


class _OneLineKnownErrors(logging.Filter):
    """Detectron2's trainer logs "Exception during training:" with a traceback; for the errors
    that end the run with an ``error:`` line, the log gets that line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _exit_status(error) is not None:
            record.msg = f"{record.getMessage()} {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


logging.getLogger("detectron2.engine.train_loop").addFilter(_OneLineKnownErrors())


class _CheckedJSONWriter(JSONWriter):
    """Detectron2's metrics.json writer; a failed write raises one OSError naming the file,
    and the writer writes nothing more."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.failed = False

    def write(self) -> None:
        if self.failed:
            return
        try:
            super().write()
        except OSError as e:
            self.failed = True
            _discard_writes(self._file_handle)
            raise _write_error(self.path, e) from None


def _quiet_event_writer_thread(args: Any, previous: Callable[[Any], None]) -> None:
    """``threading.excepthook`` that leaves out the traceback of TensorBoard's writing thread
    when it fails to write (the training thread raises that error again, naming the file)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    previous(args)


class _CheckedTensorboardWriter(TensorboardXWriter):
    """Detectron2's TensorBoard writer; a failed write raises one OSError naming the events
    file, and the writer writes nothing more."""

    def __init__(self, log_dir: str, **kwargs: Any) -> None:
        super().__init__(log_dir, **kwargs)
        self.log_dir = log_dir
        self.failed = False
        if getattr(threading.excepthook, "func", None) is not _quiet_event_writer_thread:
            threading.excepthook = functools.partial(
                _quiet_event_writer_thread, previous=threading.excepthook
            )

    def _events_file(self) -> str:
        writer = self.__dict__.get("_writer")  # created on the first write
        event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
        return getattr(event_writer, "_file_name", f"{self.log_dir}/events.out.tfevents.*")

    def write(self) -> None:
        if self.failed:
            return
        try:
            super().write()
        except OSError as e:
            self.failed = True
            raise _write_error(self._events_file(), e) from None

    def close(self) -> None:
        try:
            super().close()
        except OSError as e:
            if not self.failed:
                raise _write_error(self._events_file(), e) from None


class _MetricPrinter(CommonMetricPrinter):
    """Detectron2's console and log printer of losses, LR and ETA, which prints each iteration at
    most once (after an error, the writers write again when training ends, at the same
    iteration, where Detectron2's ETA estimate would divide by zero)."""

    def __init__(self, max_iter: int) -> None:
        super().__init__(max_iter)
        self._printed: Optional[int] = None  # the iteration printed last

    def write(self) -> None:
        iteration = get_event_storage().iter
        if self._printed == iteration:
            return
        super().write()
        self._printed = iteration


class _RaiseWriteErrors(hooks.HookBase):
    """Ends training at the end of the iteration in which a log file could not be written."""

    def after_step(self) -> None:
        _LOG_FILES.check()


def setup(args: argparse.Namespace) -> DictConfig:
    """Config, logging, output folder and datasets of one training process.

    Args:
        args: parsed command line.

    Raises:
        UsageError: for the config, the overrides or the datasets.
        OSError: the log file cannot be written.
    """
    with _held_log_records() as records:
        cfg = load_config(args, comm.get_world_size())
    with _log_errors_deferred():
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mvit_det")
    _LOG_FILES.watch(cfg.train.output_dir)
    _LOG_FILES.check()
    for record in records:  # e.g. "Scaled the recipe ..."
        logging.getLogger(record.name).handle(record)
    _register_datasets(cfg, args, check_content=not getattr(args, "datasets_checked", False))
    return cfg


def _die_with_parent() -> None:
    """Asks the kernel to kill this process (SIGKILL) when its parent process ends (Linux;
    elsewhere nothing happens). This replaces the SIGINT that torch's process launcher asks for,
    on which a training process would still run its hooks' final writes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class OutputLock:
    """The lock of a training output folder: an open description of its lock file holding an
    exclusive ``flock``.

    A training process started by the launcher receives a duplicate of the descriptor when the
    lock is passed to it (pickled while the process is spawned), so the lock is held until the
    launcher and every such process have ended. :meth:`join` makes such a process record its id
    in the lock file and die with the launcher, at once (SIGKILL).

    Args:
        path: the lock file.
        fd: the descriptor holding the lock.
        launcher: process id of the process that took the lock.
    """

    def __init__(self, path: str, fd: int, launcher: int) -> None:
        self.path = path
        self.fd = fd
        self.launcher = launcher

    def __repr__(self) -> str:
        return f"OutputLock({self.path!r}, launcher={self.launcher})"

    def __reduce__(self) -> Tuple[Callable[..., "OutputLock"], Tuple[Any, ...]]:
        # While a process is spawned, DupFd hands the descriptor itself to the new process.
        return (_received_lock, (self.path, reduction.DupFd(self.fd), self.launcher))

    def join(self) -> None:
        """In a process started by the launcher: dies with the launcher (killed by the kernel
        when it ends, on Linux) and adds this process's id to the lock file. Nothing in the
        launcher itself."""
        if os.getpid() == self.launcher:
            return
        _die_with_parent()
        if os.getppid() != self.launcher:  # the launcher ended before the request above
            os._exit(1)
        os.write(self.fd, f" {os.getpid()}".encode())


def _received_lock(path: str, descriptor: Any, launcher: int) -> OutputLock:
    """Unpickles an :class:`OutputLock` in the process it was passed to."""
    fd = descriptor.detach()
    os.set_inheritable(fd, False)
    return OutputLock(path, fd, launcher)


@contextmanager
def _locked(path: str) -> Iterator[OutputLock]:
    """Holds an exclusive ``flock`` on ``path`` (created if absent), which records the holder's
    process id, while the block runs.

    The lock is released when the block ends, unless it ends by an interruption (Ctrl-C, exit):
    then this process only closes its descriptor, and processes it passed the lock to keep it
    until they end.

    Raises:
        FileLockedError: another process holds the lock.
    """
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FileLockedError(path, f.read().strip()) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        release = True
        try:
            yield OutputLock(path, f.fileno(), os.getpid())
        except BaseException as e:
            release = isinstance(e, Exception)
            raise
        finally:
            if release:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _holders(text: str) -> str:
    """'process 12' or 'processes 12, 13, 14' from the ids in a lock file."""
    ids = text.split() or ["?"]
    return f"process {ids[0]}" if len(ids) == 1 else f"processes {', '.join(ids)}"


@contextmanager
def training_output_dir(path: str) -> Iterator[OutputLock]:
    """Creates ``path``, locks it against a second training run for the duration of the block,
    and removes the temporary files of writes killed earlier.

    Args:
        path: the run's ``train.output_dir``.

    Returns:
        the lock, to pass to the training processes (``args.output_lock``), which then hold it
        too.

    Raises:
        UsageError: the folder cannot be created or written, or another run holds it.
    """
    with ExitStack() as stack:
        try:
            os.makedirs(path, exist_ok=True)
            lock = stack.enter_context(_locked(os.path.join(path, _LOCK_FILE)))
        except FileLockedError as e:
            raise UsageError(
                f"the output directory {path!r} (train.output_dir) is in use by another training "
                f"run ({_holders(e.holder)}); wait for it to end, stop it, or choose another "
                "train.output_dir"
            ) from None
        except OSError as e:
            raise UsageError(
                f"cannot write to the output directory {path!r} (train.output_dir): {e}"
            ) from None
        removed = remove_stale_temp_files(path)
        if removed:
            logger.info(f"Removed {len(removed)} temporary files of interrupted writes in {path}")
        yield lock


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
    metrics.json that an earlier run wrote, so that a run starting at ``iteration + 1`` does not
    repeat them (-1 removes them all)."""
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


def _hyperparameters(optimizer: torch.optim.Optimizer) -> List[Dict[str, Any]]:
    """The settings of each parameter group (LR, weight decay, ...), without the parameters."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _comparable(value: Any) -> Any:
    """Numbers and sequences of numbers as tuples of floats; None for other values."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(_is_number(v) for v in values):
        return None
    return tuple(float(v) for v in values)


def _use_configured_hyperparameters(
    optimizer: torch.optim.Optimizer,
    configured: List[Dict[str, Any]],
    lr: Any,
    start_iter: int,
) -> None:
    """After resuming, gives the optimizer the LR and the other numeric settings of the config
    (``optimizer.lr``, ``optimizer.weight_decay``, ...) where they differ from the checkpoint's,
    and logs what changed. The LR schedule then continues from the config's base LRs.

    Args:
        optimizer: the optimizer, with the checkpoint's state loaded.
        configured: :func:`_hyperparameters` of the optimizer as the config built it.
        lr: the config's ``optimizer.lr``, for the log.
        start_iter: the first iteration of the resumed run, for the log.
    """
    lr_changes: Dict[int, Tuple[float, float]] = {}
    other_changes: Dict[str, Tuple[Any, Any]] = {}
    for i, (group, wanted) in enumerate(zip(optimizer.param_groups, configured)):
        saved = group.get("initial_lr", group["lr"])  # the base LR the schedule multiplies
        if saved != wanted["lr"]:
            lr_changes[i] = (saved, wanted["lr"])
            group["initial_lr"] = group["lr"] = wanted["lr"]
        for key, value in wanted.items():
            if key in ("lr", "initial_lr") or _comparable(value) is None:
                continue
            if _comparable(group.get(key)) != _comparable(value):
                other_changes.setdefault(key, (group.get(key), value))
                group[key] = value
    if lr_changes:
        main_group = hooks.LRScheduler.get_best_param_group_id(optimizer)
        old, new = lr_changes.get(main_group, next(iter(lr_changes.values())))
        logger.warning(
            f"optimizer.lr={lr} replaces the LR the checkpoint was trained with: from iteration "
            f"{start_iter} on, the LR schedule continues from the base LR {new:g} instead of "
            f"{old:g} ({len(lr_changes)} of {len(optimizer.param_groups)} parameter groups)."
        )
    for key, (old, new) in other_changes.items():
        logger.warning(
            f"The optimizer's {key} of this run's config, {new}, replaces the checkpoint's {old}."
        )


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

    The main process also draws the losses, the LR and the evaluation AP of metrics.json into
    ``metrics.png`` in ``train.output_dir`` after each evaluation and at the end (a picture
    that cannot be drawn is a logged warning).

    Resuming restores the checkpoint's optimizer state, except for its settings: the LR (the
    schedule continues from the config's ``optimizer.lr``), the weight decay and the other
    numeric settings are the config's.

    Raises:
        UsageError: the model or the checkpoint cannot be loaded, or the batch does not split.
        FloatingPointError: training diverged; the message names the last good checkpoint.
        OSError: a checkpoint, the log, metrics.json or the TensorBoard events cannot be
            written; the message names the file.
    """
    if model is None:
        model = _build_model(cfg)
        logger.info(f"Model:\n{model}")
        model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    configured = _hyperparameters(optimizer)  # before a checkpoint replaces them

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
    checkpointer = BackboneCheckpointer(
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
    # After each iteration, in this order: its evaluation, its metrics line, then its
    # checkpoint, so that a checkpoint never exists without its iteration's evaluation and line
    # (a run resumed from it does not repeat them).
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
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
        _use_configured_hyperparameters(optimizer, configured, cfg.optimizer.lr, start_iter)
    if comm.is_main_process():
        # Records of the iterations this run makes, left by an earlier run, are removed.
        _drop_metrics_after(os.path.join(cfg.train.output_dir, "metrics.json"), start_iter - 1)
        events = [f for f in os.listdir(cfg.train.output_dir) if f.startswith("events.out.")]
        writers = [
            _MetricPrinter(cfg.train.max_iter),
            _CheckedJSONWriter(os.path.join(cfg.train.output_dir, "metrics.json")),
            _CheckedTensorboardWriter(
                cfg.train.output_dir, purge_step=start_iter if events else None
            ),
        ]
        trainer.register_hooks(
            [
                hooks.PeriodicWriter(writers, period=cfg.train.log_period),
                # After the writer: it draws metrics.json as just written.
                PlotMetricsHook(
                    os.path.join(cfg.train.output_dir, "metrics.json"),
                    os.path.join(cfg.train.output_dir, METRICS_PICTURE),
                    eval_period=cfg.train.eval_period,
                    write_period=cfg.train.log_period,
                ),
            ]
        )
    trainer.register_hooks(
        [_RaiseWriteErrors(), hooks.PeriodicCheckpointer(checkpointer, **checkpoint_options)]
    )
    try:
        trainer.train(start_iter, cfg.train.max_iter)
        _LOG_FILES.check()
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
    model = _build_model(cfg)
    model.to(cfg.train.device)
    model = _wrap_ddp(model)
    try:
        BackboneCheckpointer(model, trust=trust).load(cfg.train.init_checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    results = do_test(cfg, model)
    _LOG_FILES.check()
    return results


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
    process with its status (a spawned process's status reaches the parent). A process started
    by the launcher first joins the output folder's lock (``args.output_lock``)."""
    lock = getattr(args, "output_lock", None)
    if lock is not None:
        lock.join()
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
    counts = [("--num-gpus", args.num_gpus), ("--num-machines", args.num_machines)]
    for option, value in counts:
        if value < 1:
            print(f"error: {option} must be a positive integer, got {value}", file=sys.stderr)
            return 2
    if not 0 <= args.machine_rank < args.num_machines:
        print(
            f"error: --machine-rank must be in [0, {args.num_machines - 1}] for "
            f"--num-machines {args.num_machines}, got {args.machine_rank}",
            file=sys.stderr,
        )
        return 2
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
        with training_output_dir(cfg.train.output_dir) if owns_output else nullcontext() as lock:
            if world_size > 1:  # the processes started here hold the lock too
                args.output_lock = lock
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
