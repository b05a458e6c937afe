"""Checkpoint containers: telling torch, pickle and safetensors files apart, checking that they
are whole, and loading them without running code from them.

torch files are loaded with ``torch.load(weights_only=True)`` and pickles with an unpickler that
only rebuilds plain data (dicts, lists, tuples, strings, numbers, numpy arrays of numeric and
string dtypes). A file that needs more raises :class:`UnsafeCheckpointError`; ``trust=True``
unpickles it in full.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors

try:  # numpy >= 2 (also present in late 1.x), without the deprecation warning of numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:
    from numpy.core import multiarray as _multiarray

from .errors import (
    CheckpointError,
    DamagedCheckpointError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)

__all__ = ["load_container", "sniff_container"]

# torch.save's legacy (non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# How torch, pickle and safetensors say that data ended early.
_TRUNCATION_HINTS = ("truncated", "incomplete", "eof", "end of file")
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


def sniff_container(path: str, source: Optional[str] = None) -> str:
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


def load_container(path: str, container: str, trust: bool) -> Any:
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
