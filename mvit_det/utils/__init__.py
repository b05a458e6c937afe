"""Small helpers shared across mvit_det."""

from .file_io import atomic_write

__all__ = ["atomic_write"]
