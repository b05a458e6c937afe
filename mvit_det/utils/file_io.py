"""Writing files so that they appear whole or not at all, and locking files between processes."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Callable, Iterator, List, Optional

__all__ = ["FileLockedError", "atomic_write", "file_lock", "remove_stale_temp_files"]

# atomic_write's temporary files: ".{basename}.{random}.tmp" next to the destination.
_TMP_PREFIX, _TMP_SUFFIX = ".", ".tmp"


class FileLockedError(BlockingIOError):
    """Another process holds the lock; ``holder`` is the process id it wrote, if any."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{path} is locked by process {holder or '?'}")
        self.path = path
        self.holder = holder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError that caused ``error`` (itself, or one in its cause/context chain), if any.

    torch.save, for one, reports a failed write as a RuntimeError whose context is the OSError.
    """
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        suppressed = current.__suppress_context__
        current = current.__cause__ or (None if suppressed else current.__context__)
    return None


def atomic_write(
    path: str,
    write: Callable[[IO[bytes]], None],
    verify: Optional[Callable[[str], None]] = None,
) -> None:
    """
    Writes a file so that it appears whole or not at all.

    The data goes to a temporary file in the same directory, which is flushed to disk, optionally
    verified, and then renamed over ``path`` (``os.replace`` is atomic within a file system). A
    failure leaves ``path`` as it was; a crash leaves at most a hidden ``.name.*.tmp`` file (see
    :func:`remove_stale_temp_files`), never a half-written ``path``.

    Args:
        path: destination file.
        write: called with the open temporary file (binary mode).
        verify: called with the temporary file's path once it is complete; raising keeps it from
            replacing ``path``.

    Raises:
        OSError: the file could not be written (disk full, no permission, no such directory...),
            with the errno of the failure and a message naming ``path``. Other exceptions of
            ``write`` and ``verify`` propagate unchanged.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f"{_TMP_PREFIX}{os.path.basename(path)}.", suffix=_TMP_SUFFIX
        )
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        cause = _os_error_in(e)
        if cause is None:
            raise
        raise OSError(cause.errno, f"cannot write {path!r}: {cause.strerror}") from e


@contextmanager
def file_lock(path: str, blocking: bool = True) -> Iterator[None]:
    """
    Holds an exclusive advisory lock (``flock``) on ``path`` (created if absent) while the
    ``with`` block runs. The lock file records the holder's process id. The operating system
    releases the lock when the process ends, however it ends.

    Args:
        path: the lock file.
        blocking: wait for the lock; otherwise raise at once if another process holds it.

    Raises:
        FileLockedError: ``blocking`` is False and another process holds the lock.
        OSError: the lock file cannot be created.
    """
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            raise FileLockedError(path, f.read().strip()) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_stale_temp_files(directory: str) -> List[str]:
    """
    Deletes the temporary files that :func:`atomic_write` calls killed mid-write left in
    ``directory`` (not in its sub-folders). Only call it while no other process writes there.

    Args:
        directory: a folder.

    Returns:
        the names of the deleted files.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX) and os.path.isfile(path):
            os.unlink(path)
            removed.append(name)
    return removed
