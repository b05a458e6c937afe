"""Small helpers shared across mvit_det."""

from .file_io import FileLockedError, atomic_write, file_lock, remove_stale_temp_files

__all__ = ["FileLockedError", "atomic_write", "file_lock", "remove_stale_temp_files"]
