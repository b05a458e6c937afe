"""A Detectron2 trainer with gradient accumulation, mixed precision and exact resumption."""

import logging
import time
from contextlib import nullcontext
from typing import Any, Dict, Iterable, Optional

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from fvcore.common.history_buffer import HistoryBuffer
from torch.nn.parallel import DistributedDataParallel

from .train_loader import ITERATION_SEED_KEY, derive_seed, seed_all

__all__ = ["AccumulationTrainer", "HISTORY_KEPT"]

logger = logging.getLogger(__name__)

# The newest values of each scalar that a checkpoint keeps: Detectron2's writers smooth over the
# last 20 iterations and estimate the remaining time over the last 1000.
HISTORY_KEPT = 1000


def history_state(storage: EventStorage, kept: int = HISTORY_KEPT) -> Dict[str, Dict[str, Any]]:
    """The newest ``kept`` values of every scalar history of ``storage``, as plain data.

    Args:
        storage: the training's event storage.
        kept: values kept per scalar.

    Returns:
        ``{name: {"values": [...], "iterations": [...], "count": n, "global_avg": mean}}``, where
        ``count`` and ``global_avg`` cover every value ever added, not only the kept ones.
    """
    state = {}
    for name, history in storage.histories().items():
        pairs = history.values()[-kept:]  # [(value, iteration), ...]
        state[name] = {
            "values": [float(value) for value, _ in pairs],
            "iterations": [int(it) if float(it).is_integer() else float(it) for _, it in pairs],
            "count": int(history._count),  # fvcore keeps the count only as this attribute
            "global_avg": float(history.global_avg()),
        }
    return state


def restore_history(storage: EventStorage, state: Dict[str, Dict[str, Any]]) -> None:
    """Puts the histories of :func:`history_state` back into ``storage``, so that smoothed
    values (medians over a window, global averages) continue as if training had not stopped.

    Args:
        storage: a new event storage, before any scalar was added for these names.
        state: what :func:`history_state` returned.
    """
    histories = storage.histories()  # the storage's own dict
    for name, saved in state.items():
        history = HistoryBuffer()
        for value, iteration in zip(saved["values"], saved["iterations"]):
            history.update(float(value), iteration)
        # count and mean of all values, including those older than the kept ones
        history._count = int(saved["count"])
        history._global_avg = float(saved["global_avg"])
        histories[name] = history


class AccumulationTrainer(SimpleTrainer):
    """Each iteration (one optimizer step) sums the gradients of ``accumulation_steps``
    micro-batches, so a few GPUs can train with the recipe's images per step.

    With ``amp=True`` the forward runs under ``torch.autocast`` and float16 losses are scaled by a
    ``GradScaler``. Under DDP, gradients are only all-reduced on the last micro-batch. The
    logged losses are averages over the micro-batches; one iteration consumes
    ``accumulation_steps`` batches of the data loader.

    With a ``seed``, every iteration starts by seeding Python's, numpy's and torch's RNGs from
    (seed, rank, iteration), so that the random choices of an iteration (proposal sampling,
    drop path...) do not depend on what ran before it: a run resumed from a checkpoint makes the
    same choices as an uninterrupted one. :meth:`state_dict` holds the seed and, when the data
    loader has a ``state_dict`` (:class:`~mvit_det.engine.train_loader.ResumableTrainLoader`),
    the data position of every rank, and, while training, the newest values of the event
    storage's scalar histories (:data:`HISTORY_KEPT` per scalar), which a resumed run restores
    before its first iteration so that its smoothed losses equal the uninterrupted run's.

    Args:
        model: a module returning a dict of losses (or one loss tensor) in training mode.
        data_loader: an iterable of micro-batches.
        optimizer: the optimizer.
        accumulation_steps: micro-batches per optimizer step.
        amp: run the forward under autocast.
        amp_dtype: autocast dtype; float16 also enables loss scaling.
        seed: base seed of the per-iteration RNG seeds; None leaves the RNGs alone.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        accumulation_steps: int = 1,
        amp: bool = False,
        amp_dtype: torch.dtype = torch.float16,
        seed: Optional[int] = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}.")
        super().__init__(model, data_loader, optimizer)
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.seed = seed
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(
            self.device_type, enabled=amp and amp_dtype == torch.float16
        )
        # Scalar histories of a loaded checkpoint, restored when training starts.
        self._restored_history: Optional[Dict[str, Dict[str, Any]]] = None

    def before_train(self) -> None:
        if self._restored_history:
            restore_history(self.storage, self._restored_history)
            self._restored_history = None
        super().before_train()

    def run_step(self) -> None:
        assert self.model.training, "[AccumulationTrainer] model was changed to eval mode!"
        if self.seed is not None:
            seed_all(derive_seed(self.seed, ITERATION_SEED_KEY, comm.get_rank(), self.iter))
        self.optimizer.zero_grad()
        loss_sums: Dict[str, torch.Tensor] = {}
        data_time = 0.0
        for step in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = step == self.accumulation_steps - 1
            defer_sync = isinstance(self.model, DistributedDataParallel) and not last
            with self.model.no_sync() if defer_sync else nullcontext():
                with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
                    loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                losses = sum(loss_dict.values()) / self.accumulation_steps
                self.grad_scaler.scale(losses).backward()
            for name, value in loss_dict.items():
                value = value.detach() / self.accumulation_steps
                loss_sums[name] = loss_sums[name] + value if name in loss_sums else value
        self.after_backward()
        self._write_metrics(loss_sums, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        """
        The trainer's state: iteration, hooks, optimizer, grad scaler, seed, data positions and
        (while training) the scalar histories. With several processes every rank must call it at
        once (the data positions are gathered).
        """
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        storage = getattr(self, "storage", None)  # set while training
        if storage is not None:
            ret["history"] = history_state(storage)
        if self.seed is not None:
            ret["seed"] = self.seed
        if hasattr(self.data_loader, "state_dict"):
            position = self.data_loader.state_dict()
            ret["data"] = comm.all_gather(position) if comm.get_world_size() > 1 else [position]
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        if self.seed is not None and "seed" in state_dict:
            self.seed = int(state_dict["seed"])
        self._restored_history = state_dict.get("history")
        positions = state_dict.get("data")
        if positions and hasattr(self.data_loader, "load_state_dict"):
            world_size, rank = comm.get_world_size(), comm.get_rank()
            if len(positions) == world_size:
                self.data_loader.load_state_dict(positions[rank])
                return
            # Another number of processes: continue after the images the old run has read.
            consumed = max(p["next"] for p in positions) * len(positions)
            logger.warning(
                f"The checkpoint was written by {len(positions)} training processes and this run "
                f"has {world_size}: the data order continues after the {consumed} images read, "
                "but does not repeat the uninterrupted run's exactly."
            )
            self.data_loader.load_state_dict(
                {
                    "seed": positions[0]["seed"],
                    "next": -(-consumed // world_size),
                    "pending": [],
                }
            )
