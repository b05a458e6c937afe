"""Training utilities: gradient-accumulation/AMP trainer, resumable training loader, recipe
scaling, checked config overrides, and the train/eval entry points of
tools/lazyconfig_train_net.py."""

from .overrides import ConfigOverrideError, apply_overrides_checked
from .scaling import auto_scale_recipe, micro_batch_size, scale_recipe
from .train_loader import DataLoadingError, ResumableTrainLoader
from .trainer import AccumulationTrainer

__all__ = [
    "AccumulationTrainer",
    "ConfigOverrideError",
    "DataLoadingError",
    "ResumableTrainLoader",
    "apply_overrides_checked",
    "auto_scale_recipe",
    "micro_batch_size",
    "scale_recipe",
]
