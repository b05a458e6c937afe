"""Loading and converting MViT weights (official ImageNet, timm and Detectron2 checkpoints) and
ViL weights (published classification and detection checkpoints)."""

from .backbones import adapt_backbone_state_dict, find_backbone
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
from .vil import adapt_vil_state_dict, convert_bias_table, describe_vil, find_vil

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
    "adapt_backbone_state_dict",
    "adapt_state_dict",
    "adapt_vil_state_dict",
    "convert_bias_table",
    "describe_backbone",
    "describe_vil",
    "find_backbone",
    "find_mvit",
    "find_vil",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
    "timm_to_flat",
]
