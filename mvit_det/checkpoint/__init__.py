"""Loading and converting MViT weights (official ImageNet, timm and Detectron2 checkpoints) and
ViL weights (published classification and detection checkpoints)."""

from .backbones import adapt_backbone_state_dict, find_backbone
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
from .mapping import LoadReport, adapt_state_dict, describe_backbone, timm_to_flat
from .vil import adapt_vil_state_dict, convert_bias_table, describe_vil

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
    "adapt_backbone_state_dict",
    "adapt_state_dict",
    "adapt_vil_state_dict",
    "convert_bias_table",
    "describe_backbone",
    "describe_vil",
    "find_backbone",
    "load_object",
    "nonfinite_tensors",
    "plain_data",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
    "timm_to_flat",
]
