"""Downloading checkpoints into Detectron2's cache (timeouts, an overall deadline, a size limit,
atomic writes, verification, healing of bad cached copies) and pinning files by their SHA-256."""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import queue
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import IO, Any, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from ..utils.file_io import atomic_write, file_lock
from .containers import sniff_container
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    NotACheckpointError,
    TruncatedCheckpointError,
)

__all__ = [
    "DOWNLOAD_DEADLINE_S",
    "DOWNLOAD_MAX_BYTES",
    "DOWNLOAD_TIMEOUT_S",
    "http_url",
    "resolve_local_path",
    "split_sha256",
]

logger = logging.getLogger(__name__)

# Seconds a download may wait for the server to connect or send data before it is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0
# Seconds a whole download may take; the environment variable overrides it.
DOWNLOAD_DEADLINE_S = 7200.0
_DEADLINE_ENV = "MVIT_DET_DOWNLOAD_DEADLINE_S"
# Bytes a download may have (4 GiB); the environment variable overrides it.
DOWNLOAD_MAX_BYTES = 4 << 30
_MAX_BYTES_ENV = "MVIT_DET_DOWNLOAD_MAX_BYTES"
# Detectron2's own URL scheme and the address it stands for.
_DETECTRON2_SCHEME = "detectron2://"
_DETECTRON2_HOST = "https://dl.fbaipublicfiles.com/detectron2/"
_CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".pyth", ".bin", ".safetensors", ".pt")
# Downloads from other hosts than Detectron2's are cached under
# <cache>/mvit_det_downloads/<scheme>_<host>_<port>/<URL path>.
_HOSTS_FOLDER = "mvit_det_downloads"
# URL path segments kept as folder and file names; other paths get a hashed name.
_SEGMENT = re.compile(r"[A-Za-z0-9_.~+=,@%-]{1,200}")
_HOST = re.compile(r"[a-z0-9.-]{1,200}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 1 << 20


def split_sha256(path: str) -> Tuple[str, Optional[str]]:
    """Splits a ``#sha256=<hex>`` suffix off a path or URL."""
    base, sep, fragment = path.partition("#sha256=")
    if not sep:
        return path, None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", fragment):
        raise CheckpointNotFoundError(
            f"{path!r}: '#sha256=' must be followed by the 64 hex digits of the file's SHA-256"
        )
    return base, fragment.lower()


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: str, expected: Optional[str], source: str) -> None:
    if expected is None:
        return
    actual = _sha256_of(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{source} has SHA-256 {actual}, not the expected {expected}: the file is damaged or "
            "not the one intended"
        )


def _describe_directory(path: str) -> str:
    """An error message for a directory given as a checkpoint."""
    names = sorted(os.listdir(path))
    tag = os.path.join(path, "last_checkpoint")
    if os.path.isfile(tag):
        with open(tag) as f:
            last = f.read().strip()
        if last:
            return (
                f"{path!r} is a directory (a training output folder), not a checkpoint file; "
                f"its newest checkpoint is {os.path.join(path, last)!r}"
            )
    files = [n for n in names if n.endswith(_CHECKPOINT_SUFFIXES)]
    found = f"; checkpoint files in it: {', '.join(files[:5])}" if files else ""
    return f"{path!r} is a directory, not a checkpoint file: pass the file itself{found}"


def http_url(path: str) -> Optional[str]:
    """The http(s) address of a URL this module downloads itself; None for other schemes."""
    if path.startswith(_DETECTRON2_SCHEME):
        return _DETECTRON2_HOST + path[len(_DETECTRON2_SCHEME) :]
    if path.startswith(("http://", "https://")):
        return path
    return None


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    """(scheme, host, port) of a URL, with the scheme's default port filled in."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        raise CheckpointNotFoundError(f"{url!r} is not a valid URL: its port is not a number")
    scheme = parsed.scheme.lower()
    return scheme, (parsed.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _cache_file(url: str) -> str:
    """
    Where a download is kept, always inside the cache folder. Files of Detectron2's host keep
    Detectron2's (iopath's) layout, ``<cache>/<URL path>``, so the two share their downloads;
    other hosts have a folder of their own (scheme, host and port), so no host can fill the
    entry of another. URL paths with ``.``/``..`` segments, a query or unusual characters get
    a hashed file name.
    """
    root = os.path.abspath(get_cache_dir())
    parsed = urlparse(url)
    segments = parsed.path.split("/")[1:]
    plain = (
        not parsed.query
        and not parsed.params
        and 0 < len(segments) <= 32
        and all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)
    )
    scheme, host, port = _origin(url)
    if plain and (scheme, host, port) == _origin(_DETECTRON2_HOST):
        path = os.path.join(root, *segments)
    else:
        if not _HOST.fullmatch(host):
            host = hashlib.sha256(host.encode()).hexdigest()[:16]
        folder = os.path.join(root, _HOSTS_FOLDER, f"{scheme}_{host}_{port}")
        if plain:
            path = os.path.join(folder, *segments)
        else:
            name = re.sub(r"[^A-Za-z0-9_.+=,@-]", "_", segments[-1] if segments else "")
            digest = hashlib.sha256(url.encode()).hexdigest()[:32]
            path = os.path.join(folder, "_", f"{digest}-{name[-100:]}")
    if os.path.commonpath([root, os.path.normpath(path)]) != root:  # cannot happen: checked
        raise CheckpointNotFoundError(f"{url!r} maps outside the download cache")
    return path


def _setting(value: Optional[float], env: str, default: float, what: str) -> float:
    """An argument, else the environment variable ``env``, else ``default``; positive."""
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise CheckpointNotFoundError(f"{env}={text!r} is not a number of {what}") from None
    if not 0 < value < math.inf:
        raise CheckpointNotFoundError(f"the download {what} must be positive, not {value!r}")
    return value


def _size_text(nbytes: float) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= 1 << 30 else f"{nbytes:.0f} bytes"


def _verify_download(path: str, sha256: Optional[str], source: str) -> None:
    """Raises a CheckpointError if ``path`` is not a complete checkpoint (with that digest)."""
    sniff_container(path, source)
    _check_sha256(path, sha256, source)


def _fetch_failed(url: str, why: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"could not fetch checkpoint {url!r}: {why}. URLs are downloaded on first use, which "
        "needs network access; download the file on a machine that has it and pass the local "
        "path instead"
    )


def _too_large(url: str, limit: float, why: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"could not fetch checkpoint {url!r}: {why}, more than the download limit of "
        f"{_size_text(limit)}. If the file is meant to be that large, raise the limit with "
        f"{_MAX_BYTES_ENV}=<bytes>"
    )


def _is_timeout(error: BaseException) -> bool:
    reason = getattr(error, "reason", None)
    return isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)


def _receive(url: str, timeout: float, feed: "queue.Queue[Any]", stop: threading.Event) -> None:
    """The network side of a download, run in a thread of its own: puts ("length", header),
    then ("data", chunk) until an empty chunk, or ("error", exception), into ``feed``."""

    def put(item: Tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                feed.put(item, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    request = urllib.request.Request(url, headers={"User-Agent": "mvit_det"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except BaseException as e:  # handed to the waiting thread, which names it
        put(("error", e))
        return
    with response:
        if not put(("length", response.headers.get("Content-Length"))):
            return
        while not stop.is_set():
            try:
                chunk = response.read1(_CHUNK)
            except BaseException as e:
                put(("error", e))
                return
            if not put(("data", chunk)) or not chunk:
                return


def _download(
    url: str,
    destination: str,
    sha256: Optional[str],
    timeout: float,
    deadline: float,
    max_bytes: float,
) -> None:
    """Downloads ``url`` to ``destination`` atomically, within ``deadline`` seconds and
    ``max_bytes`` bytes, verifying size, container and digest. The transfer runs in a daemon
    thread; this one waits for its data, so a server that sends a byte now and then cannot keep
    it past the deadline."""
    end = time.monotonic() + deadline
    feed: "queue.Queue[Tuple[str, Any]]" = queue.Queue(maxsize=8)
    stop = threading.Event()
    received = 0

    def next_item() -> Tuple[str, Any]:
        try:
            return feed.get(timeout=max(end - time.monotonic(), 0.0))
        except queue.Empty:
            raise CheckpointNotFoundError(
                f"could not fetch checkpoint {url!r}: the download did not finish within its "
                f"deadline of {deadline:g} s ({received} bytes received). For a slow connection, "
                f"allow more time with {_DEADLINE_ENV}=<seconds>"
            ) from None

    def write(f: IO[bytes]) -> None:
        nonlocal received
        while True:
            kind, chunk = next_item()
            if kind == "error":
                if _is_timeout(chunk):
                    why = f"the server stopped sending for {timeout:g} s"
                else:
                    why = f"the transfer failed after {received} bytes ({chunk})"
                raise _fetch_failed(url, why)
            if not chunk:
                break
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(url, max_bytes, f"it sends more than {max_bytes:.0f} bytes")
            f.write(chunk)
        if expected is not None and received != expected:
            raise TruncatedCheckpointError(
                f"the download of {url!r} was cut off after {received} of {expected} bytes; "
                "try again"
            )

    threading.Thread(
        target=_receive, args=(url, timeout, feed, stop), name="mvit_det-download", daemon=True
    ).start()
    try:
        kind, value = next_item()
        if kind == "error":
            if isinstance(value, urllib.error.HTTPError):
                raise _fetch_failed(url, f"the server answered {value.code} {value.reason}")
            if _is_timeout(value):
                raise _fetch_failed(url, f"the server did not answer within {timeout:g} s")
            reason = getattr(value, "reason", value)
            raise _fetch_failed(url, f"{type(value).__name__}: {reason}")
        expected = int(value) if value is not None and value.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            raise _too_large(url, max_bytes, f"the server announces {expected} bytes")
        atomic_write(destination, write, verify=lambda tmp: _verify_download(tmp, sha256, url))
    finally:
        stop.set()


class _Terminated(BaseException):
    """SIGTERM arrived while a download was running."""


@contextmanager
def _sigterm_removes_partial_download() -> Iterator[None]:
    """While a download runs in the main thread, SIGTERM raises :class:`_Terminated`, so that
    the partial file is removed as for any failure; the signal is then delivered again to the
    handler that was there before (by default, ending the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise CheckpointNotFoundError("the download was interrupted by SIGTERM") from None
    finally:
        if signal.getsignal(signal.SIGTERM) is terminated:
            signal.signal(signal.SIGTERM, previous)


def _make_folders(folder: str) -> List[str]:
    """Creates ``folder`` and its missing parents; returns the ones created, deepest first."""
    missing = []
    current = folder
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    os.makedirs(folder, exist_ok=True)
    return missing


def _remove_stale_temporaries(cached: str) -> None:
    """Removes the temporary files of earlier downloads of ``cached`` that were killed midway
    (``atomic_write`` names them ``.<name>.<random>.tmp``). Call it holding the file's lock."""
    folder, name = os.path.split(cached)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        logger.info(f"Removing {stale}, left by an interrupted download")
        os.unlink(stale)


def _fetch(
    url: str, sha256: Optional[str], timeout: float, deadline: float, max_bytes: float
) -> str:
    """The cached download of ``url``, fetched (again) unless a verified copy is cached. A
    failed or refused download leaves nothing behind: no file, no temporary file, no lock file,
    no folder it created."""
    cached = _cache_file(url)
    lock = cached + ".lock"
    try:
        created = _make_folders(os.path.dirname(cached))
        try:
            with file_lock(lock):  # one download at a time per file, across processes
                _remove_stale_temporaries(cached)
                if os.path.isfile(cached):
                    try:
                        _verify_download(cached, sha256, f"the cached download {cached!r}")
                        return cached
                    except CheckpointError as e:
                        logger.warning(f"{e}; deleting it and fetching {url} again")
                        os.unlink(cached)
                logger.info(f"Downloading {url} to {cached} ...")
                _download(url, cached, sha256, timeout, deadline, max_bytes)
        except BaseException:
            if not os.path.exists(cached):
                for leftover in [lock] + created:
                    try:
                        (os.rmdir if leftover in created else os.unlink)(leftover)
                    except OSError:  # not empty (other downloads), or already gone
                        pass
            raise
    except OSError as e:
        raise _fetch_failed(url, f"the download cache is not writable ({e})") from None
    return cached


def resolve_local_path(
    path: str,
    *,
    sha256: Optional[str] = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    deadline: Optional[float] = None,
    max_bytes: Optional[int] = None,
) -> str:
    """
    Returns a local file for a path or URL (``detectron2://``, ``https://``, ...).

    ``http(s)://`` and ``detectron2://`` URLs are downloaded into Detectron2's cache
    (``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``; see :func:`_cache_file` for the
    layout) on first use, with a socket timeout, an overall deadline and a size limit, and
    atomically; a cached copy that is not a complete checkpoint (an HTML error page, a cut-off
    body) or fails the digest is deleted and fetched again. A refused download leaves nothing
    in the cache; SIGTERM during a download removes the partial file, and partial files of
    downloads killed otherwise are removed by the next download of the same file. Other URL
    schemes go through Detectron2's PathManager.

    Args:
        path: local path or URL, optionally ending in ``#sha256=<64 hex digits>``.
        sha256: the expected SHA-256 of the file (hex), checked if given.
        timeout: seconds a download may wait for the server before it is abandoned.
        deadline: seconds a whole download may take; default ``$MVIT_DET_DOWNLOAD_DEADLINE_S``,
            else :data:`DOWNLOAD_DEADLINE_S` (2 hours).
        max_bytes: largest download accepted; default ``$MVIT_DET_DOWNLOAD_MAX_BYTES``, else
            :data:`DOWNLOAD_MAX_BYTES` (4 GiB). A larger announced size is refused before the
            transfer, a larger body as soon as it passes the limit.

    Returns:
        the path of a local file.

    Raises:
        CheckpointNotFoundError: the file does not exist or the URL cannot be fetched.
        NotACheckpointError: the path is a directory, or the download is not a checkpoint.
        ChecksumMismatchError: the file's digest differs from ``sha256``.
    """
    path, pinned = split_sha256(path)
    if sha256 is not None and pinned is not None and sha256.lower() != pinned:
        raise ChecksumMismatchError(f"two different SHA-256 digests were given for {path!r}")
    sha256 = (sha256 or pinned or "").lower() or None
    if os.path.isdir(path):
        raise NotACheckpointError(_describe_directory(path))
    if os.path.isfile(path):
        _check_sha256(path, sha256, repr(path))
        return path
    if "://" not in path:
        raise CheckpointNotFoundError(f"checkpoint {path!r} not found: no such file")
    url = http_url(path)
    if url is not None:
        deadline = _setting(deadline, _DEADLINE_ENV, DOWNLOAD_DEADLINE_S, "seconds")
        max_bytes = _setting(max_bytes, _MAX_BYTES_ENV, DOWNLOAD_MAX_BYTES, "bytes")
        with _sigterm_removes_partial_download():
            return _fetch(url, sha256, timeout, deadline, max_bytes)
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # PathManager handlers raise many types (URLError, OSError, ...)
        raise _fetch_failed(path, f"{type(e).__name__}: {e}") from e
    if not os.path.isfile(local):
        raise CheckpointNotFoundError(f"checkpoint {path!r} resolved to {local!r}, not a file")
    _check_sha256(local, sha256, repr(path))
    return local
