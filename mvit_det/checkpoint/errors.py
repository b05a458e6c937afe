"""Errors raised while fetching, reading, mapping or loading checkpoints."""

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "DamagedCheckpointError",
    "TruncatedCheckpointError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "ArchitectureMismatchError",
    "MissingBackboneKeysError",
]


class CheckpointError(RuntimeError):
    """Base class of every error raised while reading, mapping or loading a checkpoint."""


class CheckpointNotFoundError(CheckpointError):
    """The path does not exist, or the URL could not be fetched."""


class ChecksumMismatchError(CheckpointError):
    """The file's SHA-256 differs from the one it was asked to have."""


class DamagedCheckpointError(CheckpointError):
    """The file is a checkpoint container whose data is damaged (e.g. a zip CRC mismatch)."""


class TruncatedCheckpointError(DamagedCheckpointError):
    """The file is a checkpoint container that ends early (interrupted download or copy)."""


class NotACheckpointError(CheckpointError):
    """The file is not a checkpoint at all, or holds no weights."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the file would run code (it pickles Python objects), and it is not trusted."""


class ArchitectureMismatchError(CheckpointError):
    """The weights are for another architecture than the model's."""


class MissingBackboneKeysError(CheckpointError):
    """Loading would leave backbone parameters at their random initialisation."""
