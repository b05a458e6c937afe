"""Loading and converting MViT weights: official ImageNet, timm and Detectron2 checkpoints."""

from .checkpointer import MViTCheckpointer
from .errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    MissingBackboneKeysError,
    NotACheckpointError,
    TruncatedCheckpointError,
)
from .io import CheckpointFile, read_checkpoint, resolve_local_path, save_checkpoint
from .mapping import LoadReport, adapt_state_dict, describe_backbone, find_mvit, timm_to_flat

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointFile",
    "CheckpointNotFoundError",
    "LoadReport",
    "MViTCheckpointer",
    "MissingBackboneKeysError",
    "NotACheckpointError",
    "TruncatedCheckpointError",
    "adapt_state_dict",
    "describe_backbone",
    "find_mvit",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
    "timm_to_flat",
]
