"""A Detectron2 checkpointer that loads the weights of every backbone family (official, timm and
Detectron2 MViT weights, published ViL weights, ...) safely."""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..utils.file_io import atomic_write
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    DamagedCheckpointError,
    MissingBackboneKeysError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from .backbones import adapt_backbone_state_dict, find_backbone
from .io import CheckpointFile, nonfinite_tensors, read_checkpoint, resolve_local_path
from .mapping import LoadReport
from .summary import LoadingSummary, summarize_loading
from .unpickling import names_of

__all__ = ["BackboneCheckpointer", "MViTCheckpointer", "plain_data"]

# Names of periodic checkpoints: "{prefix}_{iteration:07d}.pth".
_PERIODIC = re.compile(r"^(?P<prefix>.+)_(?P<iteration>\d{7})\.pth$")


def plain_data(obj: Any) -> Any:
    """
    ``obj`` with omegaconf containers turned into dicts and lists, numpy arrays into tensors and
    numpy scalars into Python numbers, so that ``torch.load(weights_only=True)`` can read it.

    Args:
        obj: nested dicts, lists and tuples of tensors, numbers, strings...

    Returns:
        the converted copy (tensors are shared, not copied).
    """
    if isinstance(obj, (DictConfig, ListConfig)):
        return plain_data(OmegaConf.to_container(obj, resolve=True))
    if isinstance(obj, dict):
        return type(obj)((k, plain_data(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class BackboneCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` for models with a backbone of a registered family (MViT,
    ViL, ...).

    ``load`` (hence ``train.init_checkpoint`` and ``resume_or_load``) accepts, as local paths or
    URLs (``detectron2://...``, ``https://...``, optionally ending in ``#sha256=<hex>``), every
    layout the backbone's family reads; for MViT:

    - official ImageNet checkpoints (``.pyth``, weights under ``model_state``),
    - timm ``mvitv2_*`` weights (``.pth``, ``.bin``, ``.safetensors``),
    - Detectron2 checkpoints (``model_final_*.pkl`` or ``.pth``, weights under ``model``),
    - plain state dicts of the backbone or of the whole detector, or under ``state_dict``;

    for ViL the published classification (``{"net": ...}``) and detection checkpoints (see
    :mod:`mvit_det.modeling.backbones.vil.weights`).

    Files are read without running code from them (see :func:`~mvit_det.checkpoint.io.
    read_checkpoint`); ``trust=True`` unpickles arbitrary objects. Backbone weights are renamed to
    the model's names (``backbone.bottom_up.*``), classification-only weights are dropped,
    position tables are interpolated, and a report of loaded / resized / dropped / new / missing
    keys is logged (also kept as ``last_report``), followed by a summary of the whole model's
    tensors (``last_summary``, a :class:`~mvit_det.checkpoint.summary.LoadingSummary`) that sets
    what is expected for the file apart from what is surprising; it is logged as a warning when
    something is surprising. Detectron2's own messages about missing and unused keys are kept
    for the surprising keys and logged at debug level for the expected ones. Backbone tensors
    are never silently skipped:
    shapes that cannot be mapped raise :class:`ArchitectureMismatchError`, and missing backbone
    keys raise :class:`MissingBackboneKeysError` unless ``allow_missing_backbone_keys``. Models
    without such a backbone load by name, with the same safe reading; weights from Caffe2 and
    pycls files, or any file given as ``path?matching_heuristics=True``, are matched to the
    model's names by Detectron2's heuristics.

    ``save`` writes each checkpoint (as plain data, readable with ``weights_only=True``) and the
    ``last_checkpoint`` tag atomically, and refuses to write weights holding NaN or Inf
    (``FloatingPointError``). Resuming falls back to the previous checkpoint when the newest is
    damaged, and refuses a model whose shapes differ from the checkpoint's.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_missing_backbone_keys: bool = False,
        trust: bool = False,
        save_to_disk: Optional[bool] = None,
        log_summary: bool = True,
        **checkpointables: Any,
    ) -> None:
        """
        Args:
            model: the model (may be wrapped in DistributedDataParallel).
            save_dir: directory of saved checkpoints.
            allow_missing_backbone_keys: only warn, instead of raising, when the checkpoint
                lacks backbone keys (they keep their random initialisation).
            trust: unpickle Python objects of any kind from the files loaded; only for files from
                a trusted source, since unpickling can run arbitrary code.
            save_to_disk: whether ``save`` writes; defaults to "on the main process".
            log_summary: log the loading summary (``last_summary``); False for callers that
                show it themselves, so that it is not shown twice.
            checkpointables: other objects to save and restore (optimizer, scheduler...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_missing_backbone_keys = allow_missing_backbone_keys
        self.trust = trust
        self.log_summary = log_summary
        self.last_report: Optional[LoadReport] = None
        self.last_summary: Optional[LoadingSummary] = None
        self._summary: Optional[LoadingSummary] = None  # of the load in progress
        self._source = ""  # description of the file being loaded, for the report
        self._resuming_from = ""  # the checkpoint being resumed from, while it loads
        self._matching_heuristics = False  # asked for by the path being loaded

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """
        Loads weights (and, when resuming, the other checkpointables) from a file or URL.

        Args:
            path: local path or URL; empty to load nothing. A ``?matching_heuristics=True``
                query (Detectron2's) matches the weights of a model without a registered
                backbone to its names by Detectron2's heuristics.
            checkpointables: names of the checkpointables to restore; None for all of them (as
                when resuming), ``[]`` for the weights only.

        Returns:
            the checkpoint's entries not consumed by loading (e.g. "iteration").

        Raises:
            CheckpointError: also for ``?matching_heuristics=True`` on a model with a backbone
                of a registered family, whose weights are mapped by name.
        """
        path, heuristics = split_matching_heuristics(path)
        if heuristics and find_backbone(self.model) is not None:
            raise CheckpointError(
                f"{path}?matching_heuristics=True: the model's backbone is of a registered family "
                "(MViT, ViL, ...), whose weights are mapped by name, and Detectron2's matching "
                "heuristics would rename them; load the file without the query"
            )
        if path:
            # Fetch here so that an unreachable URL gives a clear error.
            path = resolve_local_path(path)
        self._resuming_from = path if checkpointables is None and self.checkpointables else ""
        self._matching_heuristics = heuristics
        self._summary = None
        try:
            # fvcore's load: the path is local already, and the query is read above.
            return Checkpointer.load(self, path, checkpointables)
        finally:
            self._resuming_from = ""
            self._matching_heuristics = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        ckpt = read_checkpoint(filename, trust=self.trust)
        self._refuse_skipped_state(filename, ckpt.skipped)
        if find_backbone(self.model) is None:
            checkpoint = name_matched_checkpoint(ckpt)
            if self._matching_heuristics:
                checkpoint["matching_heuristics"] = True
            return checkpoint
        self._source = ckpt.describe()
        nonfinite = nonfinite_tensors(ckpt.state)
        if nonfinite:
            self.logger.warning(
                f"{len(nonfinite)} tensors of {filename} hold NaN or Inf values: "
                f"{', '.join(nonfinite[:5])}"
            )
        return {**ckpt.extra, "model": ckpt.state}

    def _refuse_skipped_state(self, filename: str, skipped: Dict[str, List[str]]) -> None:
        """Resuming needs the whole training state: entries left out of the weights because
        they pickle Python objects make it impossible without trusting the file."""
        if not (self._resuming_from and skipped):
            return
        names = sorted({name for names in skipped.values() for name in names})
        raise UnsafeCheckpointError(
            f"cannot resume from {filename!r} without trusting it: its training state "
            f"({', '.join(map(repr, skipped))}) pickles Python objects ({names_of(names)}), and "
            "unpickling them can run arbitrary code. If you trust where the file comes from, "
            "resume with --trust-checkpoint (trust=True of the checkpointer); otherwise start a "
            f"new run from its weights with train.init_checkpoint={filename}"
        )

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        found = find_backbone(self.model)
        if found is None:
            return self._refuse_other_shapes(super()._load_model(checkpoint))
        prefix, backbone = found
        checkpoint["model"], report = adapt_backbone_state_dict(
            checkpoint["model"], backbone, prefix, source=self._source
        )
        # The weights are mapped by name above; Detectron2's fuzzy matching must not rename them.
        checkpoint.pop("matching_heuristics", None)
        self.last_report = report
        summary = summarize_loading(self.model.state_dict(), checkpoint["model"], report, prefix)
        self.last_summary = self._summary = summary
        self.logger.info(report.format())
        if self.log_summary:
            (self.logger.warning if summary.surprising else self.logger.info)(summary.format())
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
        incompatible = self._refuse_other_shapes(super()._load_model(checkpoint))
        new = set(report.new)
        missing: List[str] = [k for k in incompatible.missing_keys if k not in new]
        return incompatible._replace(missing_keys=missing)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Detectron2's messages about missing, unused and reshaped keys: as warnings for the
        keys the loading summary finds surprising (or all of them, without a summary), at debug
        level for those it expects (e.g. the FPN and heads missing from a classification
        checkpoint), which the summary already reports."""
        summary, self._summary = self._summary, None
        if summary is None:
            super()._log_incompatible_keys(incompatible)
            return
        expected = summary.keys(surprising=False)
        quiet = _IncompatibleKeys(
            missing_keys=[k for k in incompatible.missing_keys if k in expected],
            unexpected_keys=[k for k in incompatible.unexpected_keys if k in expected],
            incorrect_shapes=[],
        )
        loud = _IncompatibleKeys(
            missing_keys=[k for k in incompatible.missing_keys if k not in expected],
            unexpected_keys=[k for k in incompatible.unexpected_keys if k not in expected],
            incorrect_shapes=incompatible.incorrect_shapes,
        )
        logger = self.logger
        self.logger = _WarningsAtDebug(logger)  # type: ignore[assignment]
        try:
            super()._log_incompatible_keys(quiet)
        finally:
            self.logger = logger
        super()._log_incompatible_keys(loud)

    def _refuse_other_shapes(self, incompatible: _IncompatibleKeys) -> _IncompatibleKeys:
        """When resuming, tensors of other shapes mean another model: the optimizer state
        would not fit it either."""
        if self._resuming_from and incompatible.incorrect_shapes:
            shown = "; ".join(
                f"{key}: checkpoint {list(old)} vs model {list(new)}"
                for key, old, new in incompatible.incorrect_shapes[:4]
            )
            raise CheckpointError(
                f"cannot resume from {self._resuming_from}: the model differs from the one that "
                f"was trained ({len(incompatible.incorrect_shapes)} tensors have other shapes: "
                f"{shown}), e.g. model.roi_heads.num_classes changed. Resume with the config the "
                "run was started with, or start a new run in another train.output_dir with "
                f"train.init_checkpoint={self._resuming_from}"
            )
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """
        Resumes from the newest checkpoint in ``save_dir`` if ``resume`` and there is one,
        otherwise loads the weights of ``path``.

        A newest checkpoint that is damaged or missing is skipped, with a warning, for the
        previous periodic checkpoint.

        Args:
            path: weights to start from when not resuming.
            resume: whether to resume.

        Returns:
            as :meth:`load`.

        Raises:
            CheckpointError: the ``last_checkpoint`` file is empty, or no checkpoint is readable.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates = self._resume_candidates()
        for i, candidate in enumerate(candidates):
            try:
                return self.load(candidate)
            except (DamagedCheckpointError, NotACheckpointError, CheckpointNotFoundError) as e:
                if i + 1 == len(candidates):
                    raise
                self.logger.warning(
                    f"Cannot resume from {candidate}: {e}. Resuming from the previous checkpoint "
                    f"{candidates[i + 1]} instead."
                )
        raise AssertionError("unreachable: there is always a candidate")

    def _resume_candidates(self) -> List[str]:
        """The checkpoint named by ``last_checkpoint``, then the older periodic ones, newest
        first."""
        tag = os.path.join(self.save_dir, "last_checkpoint")
        newest = self.get_checkpoint_file()
        periodic = sorted(
            (int(m.group("iteration")), name)
            for name in self.path_manager.ls(self.save_dir)
            for m in [_PERIODIC.match(name)]
            if m
        )
        if newest.rstrip("/") == self.save_dir.rstrip("/"):
            example = periodic[-1][1] if periodic else "model_0004999.pth"
            raise CheckpointError(
                f"{tag} is empty; it should name the checkpoint to resume from. Write the name "
                f"of one into it (e.g. `echo {example} > {tag}`), or delete it to start training "
                "from scratch"
            )
        tagged = _PERIODIC.match(os.path.basename(newest))
        limit = int(tagged.group("iteration")) if tagged else None
        older = [
            os.path.join(self.save_dir, name)
            for iteration, name in reversed(periodic)
            if (limit is None or iteration < limit) and name != os.path.basename(newest)
        ]
        return [newest] + older

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Saves the model and checkpointables to ``{save_dir}/{name}.pth`` as plain data, atomically
        when ``save_dir`` is a local directory, and tags it as the last checkpoint.

        The state is collected on every process (checkpointables may gather data from all
        ranks), and written by those with ``save_to_disk``.

        Args:
            name: file name without extension.
            kwargs: extra entries to store (e.g. iteration).

        Raises:
            FloatingPointError: weights hold NaN or Inf; nothing is written or tagged.
            OSError: the file cannot be written (naming it and the errno); nothing is tagged.
        """
        if not self.save_dir:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        if not self.save_to_disk:
            return
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        nonfinite = nonfinite_tensors(data["model"])
        if nonfinite:
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            raise FloatingPointError(
                f"not saving {path}: {len(nonfinite)} of the model's {len(data['model'])} tensors "
                f"hold NaN or Inf (e.g. {', '.join(nonfinite[:3])}); training diverged. "
                + (
                    f"The last good checkpoint is {last}: resume from it with a lower "
                    "optimizer.lr (or a longer warmup)."
                    if last
                    else "No checkpoint was saved before; lower optimizer.lr (or lengthen the "
                    "warmup) and start again."
                )
            )
        data = plain_data(data)
        self.logger.info(f"Saving checkpoint to {path}")
        if "://" in self.save_dir:
            with self.path_manager.open(path, "wb") as f:
                torch.save(data, f)
        else:
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


class _WarningsAtDebug:
    """A logger whose warnings and infos are logged at debug level."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(msg, *args, **kwargs)

    info = warning

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


# The name the checkpointer had when MViT was the only family.
MViTCheckpointer = BackboneCheckpointer


def split_matching_heuristics(path: str) -> Tuple[str, bool]:
    """
    Takes Detectron2's ``matching_heuristics`` query parameter out of a path or URL.

    Args:
        path: e.g. ``model.pth?matching_heuristics=True``; other query parameters stay.

    Returns:
        the path without the parameter, and whether it asked for the heuristics.

    Raises:
        CheckpointError: a value other than True or False.
    """
    parts = urlsplit(path)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in query if key == "matching_heuristics"]
    if not values:
        return path, False
    if any(value not in ("True", "False") for value in values):
        raise CheckpointError(f"{path}: matching_heuristics={values[-1]!r} must be True or False")
    rest = urlencode([(key, value) for key, value in query if key != "matching_heuristics"])
    return urlunsplit(parts._replace(query=rest)), values[-1] == "True"


def name_matched_checkpoint(ckpt: CheckpointFile) -> Dict[str, Any]:
    """
    The checkpoint entries of a model without a registered backbone, as Detectron2's loading
    expects them: weights from a Caffe2 ``.pkl`` (one without Detectron2's ``model`` and
    ``__author__``; momenta dropped) and from a pycls ``.pyth`` (``model_state``; batch counters
    dropped) carry ``matching_heuristics``, so that Detectron2 matches their names to the
    model's; the weights of other files load by name.

    Args:
        ckpt: the file, read safely.

    Returns:
        ``{"model": weights, ...}`` for :meth:`DetectionCheckpointer._load_model`.
    """
    if ckpt.path.endswith(".pkl") and not (
        ckpt.kind == "detectron2" and "__author__" in ckpt.extra
    ):
        weights = {k: v for k, v in ckpt.state.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
    if ckpt.path.endswith(".pyth") and ckpt.kind == "official":
        weights = {k: v for k, v in ckpt.state.items() if not k.endswith("num_batches_tracked")}
        return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
    return {**ckpt.extra, "model": ckpt.state}
