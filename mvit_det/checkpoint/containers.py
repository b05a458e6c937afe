"""Checkpoint containers: telling torch, pickle and safetensors files apart, checking that they
are whole, and loading them without running code from them.

Pickles and torch files (zip and legacy layouts) are read with the plain-data unpickler of
:mod:`.unpickling`; the tensor data of torch files is read here, from the records the file
holds, with every size checked against the file. safetensors files hold no code. ``trust=True``
unpickles in full (``pickle.load``, ``torch.load(weights_only=False)``).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from typing import IO, Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file as load_safetensors

from .errors import (
    CheckpointError,
    DamagedCheckpointError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from .unpickling import (
    MalformedData,
    NotPlainData,
    PlainDataUnpickler,
    TorchStorage,
    element_size,
    finish,
    names_of,
    refused_names,
    storage_id,
)

__all__ = ["load_container", "sniff_container", "unsafe_error"]

# torch.save's legacy (non-zip) format starts with this pickled magic number, then its version.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# How pickles of protocols 0 and 1 (which have no header) begin: a dict, list or tuple, or a
# global such as collections.OrderedDict.
_OLD_PICKLE_START = re.compile(
    rb"\((d|l|t|c|I|F|S|V|N|\(|\}|\])|[}\]](q|h|\(|\.)|c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n"
)
# How torch, pickle and safetensors say that data ended early.
_TRUNCATION_HINTS = ("truncated", "ran out of input", "exhausted", "incomplete", "end of file")


def sniff_container(path: str, source: Optional[str] = None) -> str:
    """
    Identifies the container of a file from its first bytes and size; checks zip CRCs.

    Raises:
        TruncatedCheckpointError: a known container that ends early.
        DamagedCheckpointError: a zip container whose directory is broken or whose data fails
            its CRC check.
        NotACheckpointError: not a known container.
    """
    source = source or repr(path)
    size = os.path.getsize(path)
    if size == 0:
        raise TruncatedCheckpointError(f"checkpoint {source} is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        try:
            whole = zipfile.is_zipfile(path)
        except Exception:  # a damaged end record can make zipfile raise here too
            whole = True  # reported below, with the error
        if not whole:
            raise TruncatedCheckpointError(
                f"checkpoint {source} is truncated or damaged: it starts as a torch.save (zip) "
                f"file but its {size} bytes lack the zip directory that ends such a file; "
                "download or copy it again"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except Exception as e:  # zipfile raises many types on a damaged directory
            raise DamagedCheckpointError(
                f"checkpoint {source} is damaged: its zip directory or headers are broken "
                f"({type(e).__name__}: {str(e)[:200]}); download or copy it again"
            ) from None
        if bad is not None:
            raise DamagedCheckpointError(
                f"checkpoint {source} is damaged: its part {bad[:200]!r} fails the zip CRC check "
                "(changed bytes); download or copy it again"
            )
        return "torch"
    if head[0] == _PICKLE_PROTO or _OLD_PICKLE_START.match(head):
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


def _read_into(f: IO[bytes], buffer: torch.Tensor, what: str) -> None:
    """Fills the uint8 tensor ``buffer`` from ``f``; raises EOFError if ``f`` ends first."""
    view = memoryview(buffer.numpy())  # (nbytes,) uint8
    filled = 0
    while filled < len(view):
        count = f.readinto(view[filled:])
        if not count:
            raise EOFError(f"{what} ends after {filled} of its {len(view)} bytes")
        filled += count


def _stored(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    if info.compress_type != zipfile.ZIP_STORED:
        raise MalformedData(
            f"its record {info.filename!r} is compressed (method {info.compress_type}), which "
            "torch.save never does"
        )
    return info


def _read_torch_zip(path: str, refused: List[str]) -> Any:
    """Reads a torch.save zip file: ``<prefix>/data.pkl`` and its ``<prefix>/data/<key>``
    storage records."""
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        if any(name.endswith("constants.pkl") for name in infos):
            raise NotACheckpointError(
                f"{path!r} is not a checkpoint: it is a TorchScript program (as torch.jit.save "
                "and tools/export.py write), not a file of weights"
            )
        pickles = [name for name in infos if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise MalformedData(f"it has {len(pickles)} data.pkl records instead of one")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in infos:
            order = archive.read(_stored(infos[prefix + "byteorder"])).strip()
            if order != b"little":
                raise NotACheckpointError(
                    f"{path!r} was written on a machine of byte order {order[:10]!r}; only "
                    "little-endian torch files are read"
                )
        storages: Dict[Any, TorchStorage] = {}

        def load_storage(unpickler: PlainDataUnpickler, pid: Tuple[Any, ...]) -> TorchStorage:
            dtype, key, numel, _ = storage_id(pid, 5)
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in infos:
                    raise MalformedData(f"it refers to a record {name[:80]!r} that it lacks")
                info = _stored(infos[name])
                nbytes = numel * element_size(dtype)
                if info.file_size != nbytes:
                    raise MalformedData(
                        f"its record {name!r} has {info.file_size} bytes, but the storage that "
                        f"refers to it needs {nbytes}"
                    )
                data = torch.empty(nbytes, dtype=torch.uint8)
                with archive.open(info) as f:
                    _read_into(f, data, f"record {name!r}")
                storages[key] = TorchStorage(data, dtype)
            storage = storages[key]
            return storage if storage.dtype == dtype else TorchStorage(storage.data, dtype)

        data_pkl = io.BytesIO(archive.read(_stored(infos[pickles[0]])))
        unpickler = PlainDataUnpickler(data_pkl, storages=load_storage)
        try:
            return unpickler.load()
        finally:
            refused.extend(unpickler.refused)


def _read_torch_legacy(f: IO[bytes], size: int, refused: List[str]) -> Any:
    """Reads the rest of a legacy torch.save file (after its magic number): version, system
    info, the pickled object, its storage keys, then each storage (int64 element count, bytes)."""
    version = PlainDataUnpickler(f).load()
    if version != _TORCH_LEGACY_VERSION:
        raise MalformedData(f"legacy torch file of version {version!r:.40}")
    if not isinstance(PlainDataUnpickler(f).load(), dict):
        raise MalformedData("legacy torch file without its system information")
    storages: Dict[Any, Tuple[TorchStorage, int]] = {}
    allocated = [0]

    def load_storage(unpickler: PlainDataUnpickler, pid: Tuple[Any, ...]) -> Any:
        if isinstance(pid, tuple) and pid[:1] in (("module",), (b"module",)) and len(pid) > 1:
            if not refused_names([pid[1]]):  # a pickled nn.Module: its class is a placeholder
                raise MalformedData("a module without its class")
            return pid[1]
        dtype, key, numel, (view,) = storage_id(pid, 6)
        if view is not None:
            raise NotPlainData("it holds storage views, as torch files before version 0.4 do")
        if key not in storages:
            nbytes = numel * element_size(dtype)
            allocated[0] += nbytes
            if allocated[0] > size:  # checked before allocating: the data must be in the file
                raise EOFError(
                    f"its storages need {allocated[0]} bytes, more than the whole file has "
                    f"({size})"
                )
            storages[key] = (TorchStorage(torch.empty(nbytes, dtype=torch.uint8), dtype), numel)
        storage = storages[key][0]
        return storage if storage.dtype == dtype else TorchStorage(storage.data, dtype)

    unpickler = PlainDataUnpickler(f, storages=load_storage)
    try:
        obj = unpickler.load()
    finally:
        refused.extend(unpickler.refused)
    keys = PlainDataUnpickler(f).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(map(str, storages)):
        raise MalformedData("its list of storages differs from the storages it uses")
    for key in keys:
        storage, numel = storages[key]
        header = f.read(8)
        if len(header) < 8:
            raise EOFError(f"storage {key!r} is missing")
        if int.from_bytes(header, "little") != numel:
            raise MalformedData(f"storage {key!r} has another size than the pickle says")
        _read_into(f, storage.data, f"storage {key!r}")
    return obj


def _load_plain(path: str, container: str, refused: List[str]) -> Any:
    """Reads a pickle or torch file with the plain-data unpickler; the names of the objects it
    left out (placeholders) are added to ``refused``."""
    if container == "torch":
        return _read_torch_zip(path, refused)
    with open(path, "rb") as f:
        unpickler = PlainDataUnpickler(f)
        try:
            obj = unpickler.load()
        finally:
            refused.extend(unpickler.refused)
        if type(obj) is int and obj == _TORCH_LEGACY_MAGIC:  # _use_new_zipfile_serialization=False
            return _read_torch_legacy(f, os.path.getsize(path), refused)
    return obj


def _load_trusted(path: str, container: str) -> Any:
    if container == "pickle":
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
        if not (type(obj) is int and obj == _TORCH_LEGACY_MAGIC):
            return obj
    return torch.load(path, map_location="cpu", weights_only=False)


def unsafe_error(path: str, names: List[str]) -> UnsafeCheckpointError:
    """The error for a file that pickles the Python objects ``names``."""
    return UnsafeCheckpointError(
        f"{path!r} was not loaded: besides weights it pickles Python objects "
        f"({names_of(names)}), and unpickling them can run arbitrary code. If you trust where "
        "the file comes from, allow full unpickling with --trust-checkpoint (command-line "
        "tools), trust_checkpoint=True (Predictor, model_zoo.get) or trust=True "
        "(read_checkpoint, MViTCheckpointer); otherwise get the weights as plain tensors, e.g. "
        "a .safetensors file"
    )


def load_container(path: str, container: str, trust: bool, *, substitute: bool = False) -> Any:
    """
    Loads a file of a known container, turning read failures into CheckpointErrors.

    Args:
        path: a local file.
        container: what :func:`sniff_container` said.
        trust: unpickle Python objects of any kind.
        substitute: (without ``trust``) put :class:`~.unpickling.RefusedObject` placeholders
            where the file pickles objects that are not plain data, instead of refusing it. The
            caller must then keep the placeholders away from anything it uses.

    Raises:
        UnsafeCheckpointError: the file pickles objects that are not plain data.
        TruncatedCheckpointError, DamagedCheckpointError: the file is cut off or damaged.
        NotACheckpointError: the file holds data weights never are (e.g. arrays of objects).
    """
    refused: List[str] = []
    try:
        if container == "safetensors":
            return load_safetensors(path, device="cpu")
        if trust:
            return _load_trusted(path, container)
        obj = finish(_load_plain(path, container, refused))
    except CheckpointError:
        raise
    except NotPlainData as e:
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint of weights: {e}. Such files load only with full "
            "unpickling (--trust-checkpoint, trust=True), if you trust where they come from"
        ) from None
    except Exception as e:  # pickle, zipfile, torch and safetensors raise many types
        why = f"{type(e).__name__}: {e}" if not isinstance(e, MalformedData) else str(e)
        if isinstance(e, EOFError) or any(h in str(e).lower() for h in _TRUNCATION_HINTS):
            raise TruncatedCheckpointError(
                f"checkpoint {path!r} is truncated: its data ends early ({why[:300]}); "
                "download or copy it again"
            ) from None
        if refused:  # the refused objects were needed, e.g. as arguments of allowed ones
            raise unsafe_error(path, refused) from None
        if isinstance(e, MemoryError):
            why = "reading it needs more memory than there is (MemoryError)"
        raise DamagedCheckpointError(
            f"checkpoint {path!r} ({container} file) is damaged: {why[:300]}; download or copy "
            "it again"
        ) from None
    if refused and not substitute:
        raise unsafe_error(path, refused)
    return obj
