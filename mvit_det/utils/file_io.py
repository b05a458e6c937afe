"""Writing files so that they appear whole or not at all."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """
    Writes a file so that it appears whole or not at all.

    The data goes to a temporary file in the same directory, which is flushed to disk and then
    renamed over ``path`` (``os.replace`` is atomic within a file system). A crash leaves at most
    a hidden ``.name.*.tmp`` file, never a half-written ``path``.

    Args:
        path: destination file.
        write: called with the open temporary file (binary mode).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
