"""Loading and converting backbone weights safely: the checkpointer, the checkpoint readers and
writers, and the load report. The weight layouts of each backbone family (official, timm and
Detectron2 MViT checkpoints; published ViL checkpoints) are mapped by the family's package."""

from importlib import import_module
from typing import Any

from .backbones import adapt_backbone_state_dict, find_backbone
from .checkpointer import BackboneCheckpointer, MViTCheckpointer, plain_data
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
from .mapping import LoadReport
from .summary import KeyGroup, LoadingSummary, summarize_loading

# The weight mappings of the shipped families, under the names they have always had here. They
# are resolved on first use: the families' modules build on this package (errors, LoadReport), so
# importing them from here eagerly would make the order of imports matter.
_FAMILY_NAMES = {
    "adapt_state_dict": "mvit_det.modeling.backbones.mvit.weights",
    "describe_backbone": "mvit_det.modeling.backbones.mvit.weights",
    "timm_to_flat": "mvit_det.modeling.backbones.mvit.weights",
    "adapt_vil_state_dict": "mvit_det.modeling.backbones.vil.weights",
    "convert_bias_table": "mvit_det.modeling.backbones.vil.weights",
    "describe_vil": "mvit_det.modeling.backbones.vil.weights",
}


def __getattr__(name: str) -> Any:
    if name in _FAMILY_NAMES:
        return getattr(import_module(_FAMILY_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "ArchitectureMismatchError",
    "BackboneCheckpointer",
    "CheckpointError",
    "CheckpointFile",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "DamagedCheckpointError",
    "KeyGroup",
    "LoadReport",
    "LoadingSummary",
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
    "summarize_loading",
    "timm_to_flat",
]
