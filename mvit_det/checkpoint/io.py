"""Reading checkpoint files of every supported container safely, and writing Detectron2 ones.

Reading never runs code from the file unless asked to (see :mod:`.containers`); paths and URLs
are resolved, downloaded and verified by :mod:`.download`.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..utils.file_io import atomic_write
from .containers import load_container, sniff_container
from .download import DOWNLOAD_TIMEOUT_S, http_url, resolve_local_path, split_sha256
from .errors import DamagedCheckpointError, NotACheckpointError

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


def _read(
    path: str, trust: bool, sha256: Optional[str], timeout: float, parse: Callable[[Any], Any]
) -> Tuple[str, Any]:
    """Resolves, loads and parses a file; a cached download that fails is fetched once more."""
    local = resolve_local_path(path, sha256=sha256, timeout=timeout)
    try:
        container = sniff_container(local)
        return container, parse(load_container(local, container, trust))
    except DamagedCheckpointError as e:
        if local == path or http_url(split_sha256(path)[0]) is None:
            raise
        logger.warning(f"{e}; deleting the cached download and fetching {path} again")
        os.unlink(local)
        local = resolve_local_path(path, sha256=sha256, timeout=timeout)
        container = sniff_container(local)
        return container, parse(load_container(local, container, trust))


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
