"""Reading checkpoint files of every supported container, and writing Detectron2 ones."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from safetensors.torch import load_file as load_safetensors

from ..utils.file_io import atomic_write
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    NotACheckpointError,
    TruncatedCheckpointError,
)

__all__ = ["CheckpointFile", "read_checkpoint", "resolve_local_path", "save_checkpoint"]

logger = logging.getLogger(__name__)

# torch.save's legacy (non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# How torch, pickle and safetensors say that data ended early.
_TRUNCATION_HINTS = ("truncated", "incomplete", "eof", "end of file")


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
            "vil" (``net``, a ViL classification checkpoint) or "state_dict" (the weights
            themselves, e.g. a timm file).
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
            "state_dict": "plain state dict",
            "vil": "ViL classification checkpoint, weights under 'net'",
        }
        return f"{self.path} ({self.container} file, {kinds[self.kind]}, {len(self.state)} tensors)"


def resolve_local_path(path: str) -> str:
    """
    Returns a local file for a path or URL (``detectron2://``, ``https://``, ...).

    URLs go through Detectron2's PathManager, which downloads them into its cache on first use.

    Args:
        path: local path or URL.

    Returns:
        the path of a local file.

    Raises:
        CheckpointNotFoundError: the file does not exist or the URL cannot be fetched.
    """
    if os.path.isfile(path):
        return path
    if "://" not in path:
        raise CheckpointNotFoundError(f"checkpoint {path!r} not found: no such file")
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # PathManager handlers raise many types (URLError, OSError, ...)
        raise CheckpointNotFoundError(
            f"could not fetch checkpoint {path!r} ({type(e).__name__}: {e}). URLs are downloaded "
            "on first use, which needs network access; download the file on a machine that has "
            "it and pass the local path instead"
        ) from e
    if not os.path.isfile(local):
        raise CheckpointNotFoundError(f"checkpoint {path!r} resolved to {local!r}, not a file")
    return local


def _sniff_container(path: str) -> str:
    """
    Identifies the container of a file from its first bytes and size.

    Raises:
        TruncatedCheckpointError: a known container that ends early.
        NotACheckpointError: not a known container.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise TruncatedCheckpointError(f"checkpoint {path!r} is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise TruncatedCheckpointError(
                f"checkpoint {path!r} is truncated or damaged: it starts as a torch.save (zip) "
                f"file but its {size} bytes lack the zip directory that ends such a file; "
                "download or copy it again"
            )
        return "torch"
    if head[0] == _PICKLE_PROTO:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 8 + header_len > size:
            raise TruncatedCheckpointError(
                f"checkpoint {path!r} is truncated: its safetensors header announces "
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
        f"{path!r} is not a checkpoint: {hint}. Supported: torch.save files (.pth/.pyth/.bin), "
        "Detectron2 pickles (.pkl) and .safetensors"
    )


def _torch_load(path: str) -> Any:
    """torch.load restricted to plain data first; full unpickling for files that need it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):
            raise
    # Training checkpoints hold Python objects (e.g. LR scheduler state), which the restricted
    # loader refuses. Like Detectron2 .pkl files, such a file is trusted by being chosen.
    logger.info(f"{path} holds Python objects besides tensors; unpickling it in full")
    return torch.load(path, map_location="cpu", weights_only=False)


def _load_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path)  # torch.save(..., _use_new_zipfile_serialization=False)
    return obj


def _load_container(path: str, container: str) -> Any:
    """Loads a file of a known container, turning read failures into CheckpointErrors."""
    try:
        if container == "safetensors":
            return load_safetensors(path, device="cpu")
        if container == "pickle":
            return _load_pickle(path)
        return _torch_load(path)
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


def read_checkpoint(path: str) -> CheckpointFile:
    """
    Reads a checkpoint of any supported format.

    Args:
        path: local path or URL of an official ``.pyth`` (``model_state``), a timm file
            (``.pth``/``.bin``/``.safetensors``), a Detectron2 ``.pkl`` or ``.pth`` (weights under
            ``model``), or a plain state dict.

    Returns:
        the weights as tensors, with the file's other top-level entries.

    Raises:
        CheckpointNotFoundError, TruncatedCheckpointError, NotACheckpointError.
    """
    local = resolve_local_path(path)
    container = _sniff_container(local)
    obj = _load_container(local, container)
    if not isinstance(obj, Mapping):
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of weights"
        )
    for kind, key in (("official", "model_state"), ("detectron2", "model"), ("vil", "net")):
        if isinstance(obj.get(key), Mapping):
            extra = {k: v for k, v in obj.items() if k != key}
            return CheckpointFile(path, container, kind, _as_tensors(obj[key], path), extra)
    return CheckpointFile(path, container, "state_dict", _as_tensors(obj, path))


def save_checkpoint(state: Mapping[str, torch.Tensor], path: str) -> None:
    """
    Writes detector weights as a Detectron2 checkpoint, atomically.

    Args:
        state: weights with the model's names (e.g. ``backbone.bottom_up.*``).
        path: ``.pkl`` (Detectron2 model-zoo format: ``{"model": numpy arrays, "__author__"}``)
            or ``.pth`` (``torch.save({"model": tensors})``).
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
