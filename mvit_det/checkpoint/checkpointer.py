"""A Detectron2 checkpointer that loads official, timm and Detectron2 MViT weights, and published
ViL weights."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from ..utils.file_io import atomic_write
from .errors import MissingBackboneKeysError
from .io import read_checkpoint, resolve_local_path
from .backbones import adapt_backbone_state_dict, find_backbone
from .mapping import LoadReport

__all__ = ["MViTCheckpointer"]


class MViTCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` for models with an MViT (or a ViL) backbone.

    ``load`` (hence ``train.init_checkpoint`` and ``resume_or_load``) accepts, as local paths or
    URLs (``detectron2://...``, ``https://...``):

    - official ImageNet checkpoints (``.pyth``, weights under ``model_state``),
    - timm ``mvitv2_*`` weights (``.pth``, ``.bin``, ``.safetensors``),
    - Detectron2 checkpoints (``model_final_*.pkl`` or ``.pth``, weights under ``model``),
    - plain state dicts of the backbone or of the whole detector,
    - for ViL: the published classification (``{"net": ...}``) and detection checkpoints (see
      :mod:`mvit_det.checkpoint.vil`).

    Backbone weights are renamed to the model's names (``backbone.bottom_up.*``),
    classification-only weights are dropped, position tables are interpolated, and a report of
    loaded / resized / dropped / new / missing keys is logged (also kept as ``last_report``).
    Backbone tensors are never silently skipped: shapes that cannot be mapped raise
    :class:`ArchitectureMismatchError`, and missing backbone keys raise
    :class:`MissingBackboneKeysError` unless ``allow_missing_backbone_keys``.
    Models without an MViT or ViL are loaded exactly as by :class:`DetectionCheckpointer`.
    ``save`` writes each checkpoint and the ``last_checkpoint`` tag atomically.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_missing_backbone_keys: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        """
        Args:
            model: the model (may be wrapped in DistributedDataParallel).
            save_dir: directory of saved checkpoints.
            allow_missing_backbone_keys: only warn, instead of raising, when the checkpoint
                lacks backbone keys (they keep their random initialisation).
            save_to_disk: whether ``save`` writes; defaults to "on the main process".
            checkpointables: other objects to save and restore (optimizer, scheduler...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_missing_backbone_keys = allow_missing_backbone_keys
        self.last_report: Optional[LoadReport] = None
        self._source = ""  # description of the file being loaded, for the report

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """
        Loads weights (and, when resuming, the other checkpointables) from a file or URL.

        Args:
            path: local path or URL; empty to load nothing.
            args, kwargs: as for :meth:`DetectionCheckpointer.load`.

        Returns:
            the checkpoint's entries not consumed by loading (e.g. "iteration").
        """
        if path and find_backbone(self.model) is not None:
            # Fetch here so that an unreachable URL gives a clear error.
            path = resolve_local_path(path)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if find_backbone(self.model) is None:
            return super()._load_file(filename)
        ckpt = read_checkpoint(filename)
        self._source = ckpt.describe()
        return {**ckpt.extra, "model": ckpt.state}

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        found = find_backbone(self.model)
        if found is None:
            return super()._load_model(checkpoint)
        prefix, backbone = found
        checkpoint["model"], report = adapt_backbone_state_dict(
            checkpoint["model"], backbone, prefix, source=self._source
        )
        # The weights are mapped by name above; Detectron2's fuzzy matching must not rename them.
        checkpoint.pop("matching_heuristics", None)
        self.last_report = report
        self.logger.info(report.format())
        if report.missing:
            message = (
                f"{len(report.missing)} backbone tensors are missing from {self._source} and would "
                f"keep their random initialisation: {', '.join(report.missing[:8])}"
            )
            if not self.allow_missing_backbone_keys:
                raise MissingBackboneKeysError(
                    message + ". Check that the file is complete and matches the model, or pass "
                    "allow_missing_backbone_keys=True to load it anyway"
                )
            self.logger.warning(message)
        incompatible = super()._load_model(checkpoint)
        new = set(report.new)
        missing: List[str] = [k for k in incompatible.missing_keys if k not in new]
        return incompatible._replace(missing_keys=missing)

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Saves the model and checkpointables to ``{save_dir}/{name}.pth``, atomically when
        ``save_dir`` is a local directory (other PathManager targets are written as by fvcore).

        Args:
            name: file name without extension.
            kwargs: extra entries to store (e.g. iteration).
        """
        if "://" in self.save_dir:
            super().save(name, **kwargs)
            return
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """
        Records the latest checkpoint in ``{save_dir}/last_checkpoint``, atomically for local
        directories.

        Args:
            last_filename_basename: file name of the checkpoint, relative to ``save_dir``.
        """
        if "://" in self.save_dir:
            super().tag_last_checkpoint(last_filename_basename)
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
