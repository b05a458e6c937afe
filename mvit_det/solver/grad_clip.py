"""Full-model gradient clipping: one norm over all parameters, applied before each step."""

from __future__ import annotations

from typing import Any, Iterable, Tuple

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["AdamWFullModelClip", "clip_full_model_gradients"]


def clip_full_model_gradients(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> RemovableHandle:
    """
    Makes ``optimizer`` clip the gradients of all its parameters together (their joint norm, as
    Detectron2's "full_model" clipping) right before every ``step``; with a ``GradScaler`` the
    gradients are already unscaled then.

    Args:
        optimizer: the optimizer.
        max_norm: largest joint gradient norm.
        norm_type: the p of the p-norm.

    Returns:
        the handle of the step pre-hook (``.remove()`` switches clipping off).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm!r} must be > 0")

    def clip(opt: torch.optim.Optimizer, args: Tuple[Any, ...], kwargs: dict) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)

    return optimizer.register_step_pre_hook(clip)


class AdamWFullModelClip(torch.optim.AdamW):
    """
    AdamW that clips the joint gradient norm of all its parameters before each step (the
    published ViL detection recipes: 0.5 for Mask R-CNN, 1.0 for RetinaNet).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        max_grad_norm: float,
        norm_type: float = 2.0,
    ) -> None:
        """
        Args:
            params: parameters or parameter groups.
            lr, betas, eps, weight_decay: as for :class:`torch.optim.AdamW`.
            max_grad_norm: largest joint gradient norm.
            norm_type: the p of the p-norm.
        """
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        clip_full_model_gradients(self, max_grad_norm, norm_type)
