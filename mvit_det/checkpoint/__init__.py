"""Loading and converting MViT weights: official ImageNet, timm and Detectron2 checkpoints."""

from .checkpointer import MViTCheckpointer, plain_data
from .errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    DamagedCheckpointError,
    MissingBackboneKeysError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from .io import (
    DOWNLOAD_TIMEOUT_S,
    CheckpointFile,
    load_object,
    nonfinite_tensors,
    read_checkpoint,
    resolve_local_path,
    save_checkpoint,
)
from .mapping import LoadReport, adapt_state_dict, describe_backbone, find_mvit, timm_to_flat

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointFile",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "DamagedCheckpointError",
    "LoadReport",
    "MViTCheckpointer",
    "MissingBackboneKeysError",
    "NotACheckpointError",
    "TruncatedCheckpointError",
    "UnsafeCheckpointError",
    "adapt_state_dict",
    "describe_backbone",
    "find_mvit",
    "load_object",
    "nonfinite_tensors",
    "plain_data",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
    "timm_to_flat",
]
