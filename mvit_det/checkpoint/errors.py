"""Errors raised while reading, mapping or loading checkpoints."""

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "TruncatedCheckpointError",
    "NotACheckpointError",
    "ArchitectureMismatchError",
    "MissingBackboneKeysError",
]


class CheckpointError(RuntimeError):
    """Base class of every error raised while reading, mapping or loading a checkpoint."""


class CheckpointNotFoundError(CheckpointError):
    """The path does not exist, or the URL could not be fetched."""


class TruncatedCheckpointError(CheckpointError):
    """The file is a checkpoint container that ends early (interrupted download or copy)."""


class NotACheckpointError(CheckpointError):
    """The file is not a checkpoint at all, or holds no weights."""


class ArchitectureMismatchError(CheckpointError):
    """The weights are for another architecture than the model's."""


class MissingBackboneKeysError(CheckpointError):
    """Loading would leave backbone parameters at their random initialisation."""
