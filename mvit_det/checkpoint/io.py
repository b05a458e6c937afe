"""Reading checkpoint files of every supported container safely, and writing Detectron2 ones.

Reading never runs code from the file unless asked to: torch files are read with
``torch.load(weights_only=True)`` and pickles with an unpickler that only rebuilds plain data
(dicts, lists, tuples, strings, numbers, numpy arrays of numeric dtypes). A file that needs
more raises :class:`UnsafeCheckpointError`; ``trust=True`` unpickles it in full.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import http.client
import logging
import os
import pickle
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir
from safetensors.torch import load_file as load_safetensors

try:  # numpy >= 2 (also present in late 1.x), without the deprecation warning of numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:
    from numpy.core import multiarray as _multiarray

from ..utils.file_io import atomic_write, file_lock
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    DamagedCheckpointError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "CheckpointFile",
    "load_object",
    "nonfinite_tensors",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

# Seconds a download may wait for the server to connect or send data before it is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0

# torch.save's legacy (non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# How torch, pickle and safetensors say that data ended early.
_TRUNCATION_HINTS = ("truncated", "incomplete", "eof", "end of file")
# Detectron2's own URL scheme and the address it stands for.
_DETECTRON2_SCHEME = "detectron2://"
_DETECTRON2_HOST = "https://dl.fbaipublicfiles.com/detectron2/"
_CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".pyth", ".bin", ".safetensors", ".pt")
# numpy dtype kinds a checkpoint may hold: bool, (unsigned) integers, floats, complex, strings.
_PLAIN_DTYPE_KINDS = "biufcSU"


class _RefusedGlobal(pickle.UnpicklingError):
    """The file pickles a Python object outside the plain-data allowlist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not plain data")
        self.name = name


def _plain_dtype(*args: Any) -> np.dtype:
    """numpy.dtype for unpickling, refusing dtypes that hold Python objects."""
    dtype = np.dtype(*args)
    if dtype.kind not in _PLAIN_DTYPE_KINDS:
        raise _RefusedGlobal(f"numpy.dtype({dtype.str!r}) (arrays of Python objects or records)")
    return dtype


def _plain_array(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor for unpickling, restricted to plain ``np.ndarray``."""
    if subtype is not np.ndarray:
        raise _RefusedGlobal(f"numpy array subclass {getattr(subtype, '__name__', subtype)}")
    return _multiarray._reconstruct(subtype, shape, dtype)


def _plain_scalar(dtype: np.dtype, data: Any) -> Any:
    """numpy's scalar reconstructor for unpickling, for plain dtypes only."""
    return _multiarray.scalar(_plain_dtype(dtype), data)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes objects, latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Every global a plain-data pickle may name (numpy 1 and 2 module names, Python 2 builtins).
_PLAIN_GLOBALS: Dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _latin1_encode,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": _plain_dtype,
    **{
        f"{module}.{name}": value
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, value in (("_reconstruct", _plain_array), ("scalar", _plain_scalar))
    },
    **{
        f"{module}.{t.__name__}": t
        for module in ("builtins", "__builtin__")
        for t in (set, frozenset, complex, bytearray)
    },
}
# The same for torch.load(weights_only=True), which also needs the dtype classes of the arrays
# it rebuilds (numpy >= 1.25 gives each dtype its own class).
_TORCH_PLAIN_GLOBALS: List[Any] = [
    (value, name) for name, value in _PLAIN_GLOBALS.items() if name.startswith("numpy")
] + sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSU"}, key=str)


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain data only, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        value = _PLAIN_GLOBALS.get(f"{module}.{name}")
        if value is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return value


@dataclass
class CheckpointFile:
    """
    A checkpoint read from disk.

    Attributes:
        path: the path or URL it was read from.
        container: "torch" (torch.save zip or legacy), "pickle" (e.g. Detectron2 ``.pkl``) or
            "safetensors".
        kind: "official" (``model_state``, the facebookresearch/mvit ``.pyth``), "detectron2"
            (weights under ``model``, e.g. a ``model_final_*.pkl`` or a training checkpoint),
            "wrapped" (weights under ``state_dict``, as many training loops save them), "vil"
            (``net``, a ViL classification checkpoint) or "state_dict" (the weights themselves,
            e.g. a timm file).
        state: the weights as tensors.
        extra: the other top-level entries (optimizer, scheduler, iteration, ``__author__``...).
    """

    path: str
    container: str
    kind: str
    state: Dict[str, torch.Tensor]
    extra: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line naming the file, its container and how the weights were stored."""
        kinds = {
            "official": "official MViT checkpoint, weights under 'model_state'",
            "detectron2": "Detectron2 checkpoint, weights under 'model'",
            "wrapped": "weights under 'state_dict'",
            "state_dict": "plain state dict",
            "vil": "ViL classification checkpoint, weights under 'net'",
        }
        return f"{self.path} ({self.container} file, {kinds[self.kind]}, {len(self.state)} tensors)"


def _split_sha256(path: str) -> Tuple[str, Optional[str]]:
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


def _http_url(path: str) -> Optional[str]:
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
    _sniff_container(path, source)
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
    path, pinned = _split_sha256(path)
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
    url = _http_url(path)
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


def _sniff_container(path: str, source: Optional[str] = None) -> str:
    """
    Identifies the container of a file from its first bytes and size; checks zip CRCs.

    Raises:
        TruncatedCheckpointError: a known container that ends early.
        DamagedCheckpointError: a zip container whose data fails its CRC check.
        NotACheckpointError: not a known container.
    """
    source = source or repr(path)
    size = os.path.getsize(path)
    if size == 0:
        raise TruncatedCheckpointError(f"checkpoint {source} is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise TruncatedCheckpointError(
                f"checkpoint {source} is truncated or damaged: it starts as a torch.save (zip) "
                f"file but its {size} bytes lack the zip directory that ends such a file; "
                "download or copy it again"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            bad = f"? ({e})"
        if bad is not None:
            raise DamagedCheckpointError(
                f"checkpoint {source} is damaged: its part {bad!r} fails the zip CRC check "
                "(changed bytes); download or copy it again"
            )
        return "torch"
    if head[0] == _PICKLE_PROTO:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 8 + header_len > size:
            raise TruncatedCheckpointError(
                f"checkpoint {source} is truncated: its safetensors header announces "
                f"{header_len} bytes but the file has {size}; download or copy it again"
            )
        return "safetensors"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        hint = "it is a Git LFS pointer, not the weights; fetch them with `git lfs pull`"
    elif text.startswith((b"<!doctype", b"<html", b"<?xml")):
        hint = "it is an HTML/XML page, probably an error page saved by a failed download"
    else:
        hint = f"it starts with {head[:16]!r}"
    raise NotACheckpointError(
        f"{source} is not a checkpoint: {hint}. Supported: torch.save files (.pth/.pyth/.bin), "
        "Detectron2 pickles (.pkl) and .safetensors"
    )


def _torch_load(path: str, trust: bool) -> Any:
    """torch.load restricted to tensors and plain data (numpy arrays included) unless trusted."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_TORCH_PLAIN_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e):
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        refused = found.group(1) if found else str(e).strip().splitlines()[-1][:200]
        raise _RefusedGlobal(refused) from None


def _load_pickle(path: str, trust: bool) -> Any:
    with open(path, "rb") as f:
        if trust:
            obj = pickle.load(f, encoding="latin1")
        else:
            obj = _PlainDataUnpickler(f, encoding="latin1").load()
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path, trust)  # torch.save(..., _use_new_zipfile_serialization=False)
    return obj


def _load_container(path: str, container: str, trust: bool) -> Any:
    """Loads a file of a known container, turning read failures into CheckpointErrors."""
    try:
        if container == "safetensors":
            return load_safetensors(path, device="cpu")
        if container == "pickle":
            return _load_pickle(path, trust)
        return _torch_load(path, trust)
    except _RefusedGlobal as e:
        raise UnsafeCheckpointError(
            f"{path!r} was not loaded: besides weights it pickles Python objects ({e.name}), and "
            "unpickling them can run arbitrary code. If you trust where the file comes from, "
            "allow full unpickling with --trust-checkpoint (command-line tools) or trust=True "
            "(read_checkpoint, MViTCheckpointer); otherwise get the weights as plain tensors, "
            "e.g. a .safetensors file"
        ) from None
    except EOFError as e:
        raise TruncatedCheckpointError(
            f"checkpoint {path!r} is truncated: its data ends early ({e or 'end of file'}); "
            "download or copy it again"
        ) from e
    except CheckpointError:
        raise
    except Exception as e:  # torch, pickle and safetensors raise many types on damaged data
        if any(hint in str(e).lower() for hint in _TRUNCATION_HINTS):
            raise TruncatedCheckpointError(
                f"checkpoint {path!r} is truncated: {e}; download or copy it again"
            ) from e
        raise NotACheckpointError(
            f"checkpoint {path!r} ({container} file) could not be read: {type(e).__name__}: {e}"
        ) from e


def _read(
    path: str, trust: bool, sha256: Optional[str], timeout: float, parse: Callable[[Any], Any]
) -> Tuple[str, Any]:
    """Resolves, loads and parses a file; a cached download that fails is fetched once more."""
    local = resolve_local_path(path, sha256=sha256, timeout=timeout)
    try:
        container = _sniff_container(local)
        return container, parse(_load_container(local, container, trust))
    except DamagedCheckpointError as e:
        if local == path or _http_url(_split_sha256(path)[0]) is None:
            raise
        logger.warning(f"{e}; deleting the cached download and fetching {path} again")
        os.unlink(local)
        local = resolve_local_path(path, sha256=sha256, timeout=timeout)
        container = _sniff_container(local)
        return container, parse(_load_container(local, container, trust))


def load_object(
    path: str,
    *,
    trust: bool = False,
    sha256: Optional[str] = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Any:
    """
    Loads whatever a checkpoint file holds, as safely as :func:`read_checkpoint`.

    Args:
        path: local path or URL (see :func:`resolve_local_path`).
        trust: unpickle Python objects of any kind (only for files from a trusted source).
        sha256: expected SHA-256 of the file.
        timeout: download timeout in seconds.

    Returns:
        the loaded object (usually a dict).

    Raises:
        CheckpointError: see :func:`read_checkpoint`.
    """
    return _read(path, trust, sha256, timeout, lambda obj: obj)[1]


def _as_tensors(state: Mapping[str, Any], path: str) -> Dict[str, torch.Tensor]:
    """Checks that ``state`` maps names to tensors or arrays; converts arrays to tensors."""
    if not isinstance(state, Mapping) or not state:
        raise NotACheckpointError(f"{path!r} holds no weights (empty or not a dict)")
    bad = [k for k, v in state.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
    if bad:
        shown = ", ".join(f"{k!r} ({type(state[k]).__name__})" for k in bad[:5])
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint of weights: {len(bad)} of its {len(state)} entries are "
            f"not tensors, e.g. {shown}"
        )
    return {
        k: torch.from_numpy(np.asarray(v, order="C")) if isinstance(v, np.ndarray) else v
        for k, v in state.items()
    }


def _weights_of(obj: Any, path: str, container: str) -> CheckpointFile:
    if not isinstance(obj, Mapping):
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of weights"
        )
    for kind, key in (
        ("official", "model_state"),
        ("detectron2", "model"),
        ("wrapped", "state_dict"),
        ("vil", "net"),
    ):
        if isinstance(obj.get(key), Mapping):
            extra = {k: v for k, v in obj.items() if k != key}
            return CheckpointFile(path, container, kind, _as_tensors(obj[key], path), extra)
    return CheckpointFile(path, container, "state_dict", _as_tensors(obj, path))


def read_checkpoint(
    path: str,
    *,
    trust: bool = False,
    sha256: Optional[str] = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> CheckpointFile:
    """
    Reads a checkpoint of any supported format without running code from it.

    Args:
        path: local path or URL of an official ``.pyth`` (``model_state``), a timm file
            (``.pth``/``.bin``/``.safetensors``), a Detectron2 ``.pkl`` or ``.pth`` (weights under
            ``model``), a training checkpoint with weights under ``state_dict``, or a plain
            state dict. A ``#sha256=<hex>`` suffix pins the file's digest.
        trust: unpickle Python objects of any kind. Only for files from a trusted source: such
            objects can run arbitrary code while they are unpickled.
        sha256: expected SHA-256 of the file (hex).
        timeout: seconds a download may wait for the server.

    Returns:
        the weights as tensors, with the file's other top-level entries.

    Raises:
        CheckpointNotFoundError, ChecksumMismatchError, TruncatedCheckpointError,
        DamagedCheckpointError, NotACheckpointError, UnsafeCheckpointError.
    """
    container, ckpt = _read(path, trust, sha256, timeout, lambda obj: obj)
    return _weights_of(ckpt, path, container)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> List[str]:
    """
    Names of the floating-point tensors that hold NaN or infinite values.

    Args:
        state: named tensors.

    Returns:
        the names, in ``state``'s order.
    """
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def save_checkpoint(state: Mapping[str, torch.Tensor], path: str) -> None:
    """
    Writes detector weights as a Detectron2 checkpoint, atomically.

    Args:
        state: weights with the model's names (e.g. ``backbone.bottom_up.*``).
        path: ``.pkl`` (Detectron2 model-zoo format: ``{"model": numpy arrays, "__author__"}``)
            or ``.pth`` (``torch.save({"model": tensors})``).

    Raises:
        ValueError: ``path`` has another extension.
        OSError: the file cannot be written (naming the path and the errno).
    """
    if path.endswith(".pkl"):

        def to_numpy(t: torch.Tensor) -> np.ndarray:
            t = t.detach().cpu()
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

        data = {"model": {k: to_numpy(v) for k, v in state.items()}, "__author__": "mvit_det"}
        atomic_write(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    elif path.endswith(".pth"):
        atomic_write(path, lambda f: torch.save({"model": dict(state)}, f))
    else:
        raise ValueError(f"output {path!r} must end with .pkl or .pth")
