"""Reading checkpoint files of every supported container safely, and writing Detectron2 ones.

Reading never runs code from the file unless asked to (see :mod:`.containers`); paths and URLs
are resolved, downloaded and verified by :mod:`.download`.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..utils.file_io import atomic_write
from .containers import load_container, sniff_container, unsafe_error
from .download import (
    DOWNLOAD_DEADLINE_S,
    DOWNLOAD_MAX_BYTES,
    DOWNLOAD_TIMEOUT_S,
    http_url,
    resolve_local_path,
    split_sha256,
)
from .errors import DamagedCheckpointError, NotACheckpointError
from .unpickling import names_of, refused_names

__all__ = [
    "DOWNLOAD_DEADLINE_S",
    "DOWNLOAD_MAX_BYTES",
    "DOWNLOAD_TIMEOUT_S",
    "CheckpointFile",
    "load_object",
    "nonfinite_tensors",
    "read_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

# Pickle protocol of the .pkl files written here: 4 stores array bytes as they are (protocol 2
# goes through latin-1 text), allows arrays over 4 GiB, and every Python 3 reads it.
_PKL_PROTOCOL = 4


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
            (``net``, a ViL classification checkpoint), "caffe2" (``blobs``, a Caffe2 /
            Detectron1 model) or "state_dict" (the weights themselves, e.g. a timm file).
        state: the weights as tensors.
        extra: the other top-level entries (optimizer, scheduler, iteration, ``__author__``...).
        skipped: top-level entries left out because they pickle Python objects that are not
            plain data (e.g. the omegaconf objects in Detectron2's trainer state), with the
            names of those objects; they were not unpickled.
    """

    path: str
    container: str
    kind: str
    state: Dict[str, torch.Tensor]
    extra: Dict[str, Any] = field(default_factory=dict)
    skipped: Dict[str, List[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line naming the file, its container and how the weights were stored."""
        kinds = {
            "official": "official MViT checkpoint, weights under 'model_state'",
            "detectron2": "Detectron2 checkpoint, weights under 'model'",
            "wrapped": "weights under 'state_dict'",
            "state_dict": "plain state dict",
            "vil": "ViL classification checkpoint, weights under 'net'",
            "caffe2": "Caffe2 checkpoint, weights under 'blobs'",
        }
        return f"{self.path} ({self.container} file, {kinds[self.kind]}, {len(self.state)} tensors)"


def _read(
    path: str, trust: bool, sha256: Optional[str], timeout: float, substitute: bool = False
) -> Tuple[str, Any]:
    """Resolves and loads a file; a cached download that fails is fetched once more."""
    local = resolve_local_path(path, sha256=sha256, timeout=timeout)
    try:
        container = sniff_container(local)
        return container, load_container(local, container, trust, substitute=substitute)
    except DamagedCheckpointError as e:
        if local == path or http_url(split_sha256(path)[0]) is None:
            raise
        logger.warning(f"{e}; deleting the cached download and fetching {path} again")
        os.unlink(local)
        local = resolve_local_path(path, sha256=sha256, timeout=timeout)
        container = sniff_container(local)
        return container, load_container(local, container, trust, substitute=substitute)


# Where checkpoints keep their weights, in the order they are looked for.
_WEIGHT_ENTRIES = (
    ("official", "model_state"),
    ("detectron2", "model"),
    ("wrapped", "state_dict"),
    ("vil", "net"),
    ("caffe2", "blobs"),
)


def _leave_out_refused(obj: Any, path: str) -> Tuple[Any, Dict[str, List[str]]]:
    """Drops the top-level entries holding placeholders of refused objects, if the weights
    themselves hold none; otherwise the file is unsafe."""
    names = refused_names(obj)
    if not names:
        return obj, {}
    if isinstance(obj, Mapping) and not refused_names(list(obj.keys())):
        for _, key in _WEIGHT_ENTRIES:
            if key not in obj:
                continue
            inside = refused_names(obj[key])
            if inside:
                raise unsafe_error(path, inside)
            if isinstance(obj[key], Mapping):
                skipped = {str(k): refused_names(v) for k, v in obj.items()}
                skipped = {k: v for k, v in skipped.items() if v}
                return {k: v for k, v in obj.items() if str(k) not in skipped}, skipped
    raise unsafe_error(path, names)


def _read_for_weights(
    path: str, trust: bool, sha256: Optional[str] = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Tuple[str, Any, Dict[str, List[str]]]:
    """
    Loads a file for its weights: top-level entries beside the weights that pickle objects
    other than plain data are left out (never unpickled) instead of refusing the file.

    Returns:
        the container, the loaded object without those entries, and the entries left out
        (name -> the objects they pickle).
    """
    container, obj = _read(path, trust, sha256, timeout, substitute=not trust)
    obj, skipped = _leave_out_refused(obj, path)
    if skipped:
        logger.info(
            f"Not loaded from {path}: {', '.join(map(repr, skipped))} (not weights), which pickle "
            f"Python objects ({names_of(sorted({n for v in skipped.values() for n in v}))})"
        )
    return container, obj, skipped


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
    return _read(path, trust, sha256, timeout)[1]


# numpy dtypes that are tensor dtypes too (in either byte order).
_TENSOR_NUMPY_DTYPES = {
    np.dtype(name)
    for name in (
        "bool uint8 uint16 uint32 uint64 int8 int16 int32 int64 float16 float32 float64 "
        "complex64 complex128"
    ).split()
}


def _describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"numpy array of dtype {value.dtype.str}"
    return type(value).__name__


def _as_tensors(state: Mapping[str, Any], path: str) -> Dict[str, torch.Tensor]:
    """Checks that ``state`` maps names to tensors or numeric arrays; converts the arrays."""
    if not isinstance(state, Mapping) or not state:
        raise NotACheckpointError(f"{path!r} holds no weights (empty or not a dict)")
    bad = [
        k
        for k, v in state.items()
        if not isinstance(v, torch.Tensor)
        and not (isinstance(v, np.ndarray) and v.dtype.newbyteorder("=") in _TENSOR_NUMPY_DTYPES)
    ]
    if bad:
        shown = ", ".join(f"{k!r} ({_describe_value(state[k])})" for k in bad[:5])
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint of weights: {len(bad)} of its {len(state)} entries are "
            f"not tensors or numeric arrays, e.g. {shown}"
        )
    return {
        k: (
            torch.from_numpy(np.asarray(v, dtype=v.dtype.newbyteorder("="), order="C"))
            if isinstance(v, np.ndarray)
            else v
        )
        for k, v in state.items()
    }


def _weights_of(obj: Any, path: str, container: str) -> CheckpointFile:
    if not isinstance(obj, Mapping):
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of weights"
        )
    for kind, key in _WEIGHT_ENTRIES:
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

    Top-level entries beside the weights that pickle Python objects other than plain data (as
    the trainer state of Detectron2's own training does) are left out, never unpickled, and
    named in ``skipped``; such objects among the weights make the file unsafe.

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
    container, obj, skipped = _read_for_weights(path, trust, sha256, timeout)
    ckpt = _weights_of(obj, path, container)
    ckpt.skipped = skipped
    return ckpt


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
        path: ``.pkl`` (Detectron2 model-zoo format: ``{"model": numpy arrays, "__author__"}``,
            pickle protocol 4, which Detectron2 and the plain-data reader both read) or ``.pth``
            (``torch.save({"model": tensors})``).

    Raises:
        ValueError: ``path`` has another extension.
        OSError: the file cannot be written (naming the path and the errno).
    """
    if path.endswith(".pkl"):

        def to_numpy(t: torch.Tensor) -> np.ndarray:
            t = t.detach().cpu()
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

        data = {"model": {k: to_numpy(v) for k, v in state.items()}, "__author__": "mvit_det"}
        atomic_write(path, lambda f: pickle.dump(data, f, protocol=_PKL_PROTOCOL))
    elif path.endswith(".pth"):
        atomic_write(path, lambda f: torch.save({"model": dict(state)}, f))
    else:
        raise ValueError(f"output {path!r} must end with .pkl or .pth")
