"""Scaling a recipe to another batch size: linear LR scaling, inverse schedule scaling."""

import logging
from typing import Any, Dict

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["scale_recipe", "auto_scale_recipe", "micro_batch_size"]

logger = logging.getLogger(__name__)


def _scaled_count(iterations: int, factor: float) -> int:
    """An iteration count for a batch ``factor`` times larger: fewer steps, at least one."""
    return max(1, round(iterations / factor))


def _scale_iterations(node: Any, factor: float) -> None:
    """Divides every ``milestones`` / ``num_updates`` entry of an LR-scheduler config by factor."""
    if isinstance(node, ListConfig):
        for item in node:
            _scale_iterations(item, factor)
        return
    if not isinstance(node, DictConfig):
        return
    for key in list(node.keys()):
        if OmegaConf.is_interpolation(node, key):
            continue  # e.g. "${train.max_iter}": follows the scaled value
        value = node[key]
        if key == "milestones":
            node[key] = [_scaled_count(m, factor) for m in value]
        elif key == "num_updates" and value is not None:
            node[key] = _scaled_count(value, factor)
        else:
            _scale_iterations(value, factor)


def scale_recipe(cfg: DictConfig, total_batch_size: int) -> Dict[str, Any]:
    """Rescales a recipe in place to ``total_batch_size`` images per optimizer step.

    The learning rate scales linearly with the batch; ``train.max_iter``, the LR milestones
    (warmup is a fraction of the schedule, so it follows), ``train.eval_period`` and
    ``train.checkpointer.period`` scale inversely, so the run sees the same number of epochs.
    ``train.reference_world_size`` scales with the batch (same images per GPU).

    Args:
        cfg: a config with ``dataloader.train.total_batch_size``, ``optimizer.lr``,
            ``lr_multiplier`` and ``train``.
        total_batch_size: the new number of images per optimizer step.

    Returns:
        the old and new values, for logging.
    """
    if total_batch_size < 1:
        raise ValueError(f"total batch size must be >= 1, got {total_batch_size}.")
    old_batch = int(cfg.dataloader.train.total_batch_size)
    factor = total_batch_size / old_batch
    before = {
        "total_batch_size": old_batch,
        "lr": cfg.optimizer.lr,
        "max_iter": cfg.train.max_iter,
    }
    cfg.dataloader.train.total_batch_size = total_batch_size
    cfg.optimizer.lr = cfg.optimizer.lr * factor
    cfg.train.max_iter = _scaled_count(cfg.train.max_iter, factor)
    cfg.train.eval_period = _scaled_count(cfg.train.eval_period, factor)
    cfg.train.checkpointer.period = _scaled_count(cfg.train.checkpointer.period, factor)
    if "reference_world_size" in cfg.train:
        cfg.train.reference_world_size = max(1, round(cfg.train.reference_world_size * factor))
    _scale_iterations(cfg.lr_multiplier, factor)
    after = {
        "total_batch_size": total_batch_size,
        "lr": cfg.optimizer.lr,
        "max_iter": cfg.train.max_iter,
    }
    logger.info(f"Scaled the recipe by {factor:g}: {before} -> {after}")
    return {"before": before, "after": after}


def auto_scale_recipe(cfg: DictConfig, world_size: int) -> Dict[str, Any]:
    """Scales the recipe from ``train.reference_world_size`` GPUs to ``world_size`` GPUs, keeping
    the images per GPU (Detectron2's ``SOLVER.REFERENCE_WORLD_SIZE`` rule).

    Args:
        cfg: the config.
        world_size: number of training processes.
    """
    reference = int(cfg.train.get("reference_world_size", 0))
    if reference <= 0:
        raise ValueError(
            "--auto-scale needs train.reference_world_size (the number of GPUs the recipe was "
            "made for); set it with train.reference_world_size=N."
        )
    batch = int(cfg.dataloader.train.total_batch_size)
    if (batch * world_size) % reference:
        raise ValueError(
            f"Cannot scale {batch} images on {reference} GPUs to {world_size} GPUs: "
            f"{batch} x {world_size} / {reference} is not an integer. Use --scale-batch-size N."
        )
    return scale_recipe(cfg, batch * world_size // reference)


def micro_batch_size(total_batch_size: int, accumulation_steps: int, world_size: int) -> int:
    """Images per data-loader batch (all GPUs together) under gradient accumulation.

    Args:
        total_batch_size: images per optimizer step.
        accumulation_steps: micro-batches per optimizer step.
        world_size: number of training processes.
    """
    if accumulation_steps < 1:
        raise ValueError(f"gradient accumulation must be >= 1, got {accumulation_steps}.")
    if total_batch_size % (accumulation_steps * world_size):
        raise ValueError(
            f"{total_batch_size} images per step cannot be split into {accumulation_steps} "
            f"micro-batches on {world_size} process(es): total_batch_size must be a multiple of "
            f"grad_accumulation x world size = {accumulation_steps * world_size}."
        )
    return total_batch_size // accumulation_steps
