"""Downloading checkpoints into Detectron2's cache (timeouts, atomic writes, verification,
healing of bad cached copies) and pinning files by their SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Any, Optional, Tuple
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

__all__ = ["DOWNLOAD_TIMEOUT_S", "http_url", "resolve_local_path", "split_sha256"]

logger = logging.getLogger(__name__)

# Seconds a download may wait for the server to connect or send data before it is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0
# Detectron2's own URL scheme and the address it stands for.
_DETECTRON2_SCHEME = "detectron2://"
_DETECTRON2_HOST = "https://dl.fbaipublicfiles.com/detectron2/"
_CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".pyth", ".bin", ".safetensors", ".pt")


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


def _cache_file(url: str) -> str:
    """Where a download is kept: Detectron2's (iopath's) cache layout, so caches are shared."""
    parsed = urlparse(url)
    folder = os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")))
    return os.path.join(folder, os.path.basename(parsed.path) or "index")


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


def _download(url: str, destination: str, sha256: Optional[str], timeout: float) -> None:
    """Downloads ``url`` to ``destination`` atomically, verifying size, container and digest."""

    def write(f: Any) -> None:
        received = 0
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, http.client.HTTPException) as e:
                why = f"the transfer failed after {received} bytes ({e})"
                raise _fetch_failed(url, why) from None
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
        if expected is not None and received != int(expected):
            raise TruncatedCheckpointError(
                f"the download of {url!r} was cut off after {received} of {expected} bytes; "
                "try again"
            )

    request = urllib.request.Request(url, headers={"User-Agent": "mvit_det"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise _fetch_failed(url, f"the server answered {e.code} {e.reason}") from None
    except TimeoutError:
        raise _fetch_failed(url, f"the server did not answer within {timeout:g} s") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise _fetch_failed(url, f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with response:
        expected = response.headers.get("Content-Length")
        try:
            atomic_write(destination, write, verify=lambda tmp: _verify_download(tmp, sha256, url))
        except TimeoutError:
            raise _fetch_failed(url, f"the server stopped sending for {timeout:g} s") from None


def _fetch(url: str, sha256: Optional[str], timeout: float) -> str:
    """The cached download of ``url``, fetched (again) unless a verified copy is cached."""
    cached = _cache_file(url)
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with file_lock(cached + ".lock"):  # one download at a time per file, across processes
            if os.path.isfile(cached):
                try:
                    _verify_download(cached, sha256, f"the cached download {cached!r}")
                    return cached
                except CheckpointError as e:
                    logger.warning(f"{e}; deleting it and fetching {url} again")
                    os.unlink(cached)
            logger.info(f"Downloading {url} to {cached} ...")
            _download(url, cached, sha256, timeout)
    except OSError as e:
        raise _fetch_failed(url, f"the download cache is not writable ({e})") from None
    return cached


def resolve_local_path(
    path: str, *, sha256: Optional[str] = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> str:
    """
    Returns a local file for a path or URL (``detectron2://``, ``https://``, ...).

    ``http(s)://`` and ``detectron2://`` URLs are downloaded into Detectron2's cache
    (``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``) on first use, with a socket timeout
    and atomically; a cached copy that is not a complete checkpoint (an HTML error page, a
    cut-off body) or fails the digest is deleted and fetched again. Other URL schemes go through
    Detectron2's PathManager.

    Args:
        path: local path or URL, optionally ending in ``#sha256=<64 hex digits>``.
        sha256: the expected SHA-256 of the file (hex), checked if given.
        timeout: seconds a download may wait for the server before it is abandoned.

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
        return _fetch(url, sha256, timeout)
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # PathManager handlers raise many types (URLError, OSError, ...)
        raise _fetch_failed(path, f"{type(e).__name__}: {e}") from e
    if not os.path.isfile(local):
        raise CheckpointNotFoundError(f"checkpoint {path!r} resolved to {local!r}, not a file")
    _check_sha256(local, sha256, repr(path))
    return local
