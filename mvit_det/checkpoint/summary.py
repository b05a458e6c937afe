"""What loading a checkpoint into a whole detector did with every tensor, split into what is
expected for that kind of checkpoint and what is surprising.

A classification checkpoint (official MViTv2, timm, MAE-style, published ViL) holds a backbone
only: the detector's neck and heads keep their initialisation, the backbone's detection-only
tensors (those its family's weight mapping reports as new, e.g. the per-output norms) are absent,
and the classifier's tensors (those the mapping drops) are left over. All of that is expected.
Surprising is what points at a wrong or damaged file: backbone tensors that the file should
have had, tensors in both with other shapes, tensors the model has no place for that the
family's mapping does not know as classification-only, and detector tensors missing from a file
that holds detector weights.

The rule is read from the family's :class:`~mvit_det.checkpoint.mapping.LoadReport` (its ``new``
and ``dropped`` keys), not from a list of names.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

import torch

from .mapping import LoadReport, Shape, group_keys

__all__ = ["KeyGroup", "LoadingSummary", "summarize_loading"]

# How many collapsed key patterns a row of the table shows.
_EXAMPLES = 3
# Buffers of older Detectron2 files that the model recomputes (Detectron2 ignores them too).
_OLD_ANCHORS = "anchor_generator.cell_anchors"


@dataclass(frozen=True)
class KeyGroup:
    """
    One row of a :class:`LoadingSummary`.

    Attributes:
        kind: "missing" (model tensors the file does not hold; they keep their initialisation),
            "unused" (file tensors the model takes nothing from) or "shape" (in both, with
            other shapes; not loaded).
        why: the reason, in words.
        keys: the tensors' names, sorted: model names for "missing" and "shape", the file's
            names for "unused" (as the family's mapping passes them on, or names them when it
            drops them).
        shapes: for "shape", (shape in the file, shape in the model) of each key.
    """

    kind: str
    why: str
    keys: Tuple[str, ...]
    shapes: Tuple[Tuple[Shape, Shape], ...] = ()


@dataclass(frozen=True)
class LoadingSummary:
    """
    What loading a checkpoint into a detector did, in groups (see the module's docstring).

    Attributes:
        source: the file, as the checkpointer describes it.
        target: the model's backbone and where it sits.
        loaded: number of model tensors taken from the file (interpolated ones included).
        total: number of tensors in the model's state dict.
        resized: number of the loaded tensors that were interpolated (position tables).
        expected: groups that are normal for this kind of checkpoint.
        surprising: groups that point at a wrong or damaged file.
    """

    source: str
    target: str
    loaded: int
    total: int
    resized: int
    expected: Tuple[KeyGroup, ...]
    surprising: Tuple[KeyGroup, ...]

    def keys(self, surprising: bool, kind: Optional[str] = None) -> FrozenSet[str]:
        """
        The keys of the surprising (or the expected) groups.

        Args:
            surprising: True for the surprising groups, False for the expected ones.
            kind: only groups of this kind ("missing", "unused", "shape"); None for all.

        Returns:
            the keys.
        """
        groups = self.surprising if surprising else self.expected
        return frozenset(k for g in groups if kind in (None, g.kind) for k in g.keys)

    def format(self) -> str:
        """The summary as logged by the checkpointer and printed by the tools: a header, then
        one table row per group, surprising rows first and flagged ``!!``; one line says so when
        nothing is surprising."""
        resized = f" ({self.resized} interpolated)" if self.resized else ""
        lines = [
            f"Loading summary: {self.loaded} of {self.total} model tensors loaded{resized} from "
            f"{self.source} into {self.target}"
        ]
        if self.surprising:
            count = sum(len(g.keys) for g in self.surprising)
            groups = len(self.surprising)
            lines.append(
                f"  !! SURPRISING: {count} tensor{'s' * (count != 1)} in {groups} "
                f"group{'s' * (groups != 1)}; check that the file and the model are the ones you "
                "mean"
            )
        else:
            lines.append("  nothing surprising: every tensor not loaded is expected for this file")
        rows = [("!!", g) for g in self.surprising] + [("", g) for g in self.expected]
        if rows:
            whys = max(len(g.why) for _, g in rows)
            lines.append(f"  {'':2} {'kind':7} {'count':>5}  {'why':{whys}}  examples")
            for flag, group in rows:
                lines.append(
                    f"  {flag:2} {group.kind:7} {len(group.keys):5d}  {group.why:{whys}}  "
                    f"{_examples(group)}"
                )
        return "\n".join(lines)


def _examples(group: KeyGroup) -> str:
    """A few collapsed key patterns of a group (with the shapes of a "shape" group)."""
    if group.kind == "shape":
        shown = [
            f"{key} (file {list(old)}, model {list(new)})"
            for key, (old, new) in zip(group.keys[:_EXAMPLES], group.shapes)
        ]
        rest = len(group.keys) - len(shown)
    else:
        patterns = group_keys(group.keys)
        shown, rest = patterns[:_EXAMPLES], len(patterns) - _EXAMPLES
    return ", ".join(shown) + (f", ... ({rest} more)" if rest > 0 else "")


def _part(key: str, backbone_prefix: str) -> str:
    """The part of the detector a key belongs to: "neck" for the modules beside the backbone
    inside its parent (the FPN of ``backbone.*`` around ``backbone.bottom_up.``), else the
    top-level module (``proposal_generator``, ``roi_heads``)."""
    parent = backbone_prefix.rstrip(".").rpartition(".")[0]
    if parent and key.startswith(parent + "."):
        return "neck"
    return key.split(".", 1)[0]


def _groups(keys: Dict[Tuple[str, str], List[str]]) -> List[KeyGroup]:
    return [KeyGroup(kind, why, tuple(sorted(names))) for (kind, why), names in keys.items()]


def summarize_loading(
    model_state: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    report: LoadReport,
    backbone_prefix: str,
) -> LoadingSummary:
    """
    Groups what loading ``weights`` into a model will do with each tensor.

    Args:
        model_state: the model's ``state_dict()`` (names and shapes).
        weights: the file's weights as the backbone family's mapping passes them on (backbone
            tensors under the model's names, the rest under their own names).
        report: that mapping's report (its ``new`` and ``dropped`` keys are expected).
        backbone_prefix: the backbone's name prefix in the model, e.g. "backbone.bottom_up.".

    Returns:
        the summary.
    """
    new = set(report.new)
    resized = {key for key, _, _ in report.resized}
    detector_weights = any(not k.startswith(backbone_prefix) for k in weights)
    expected: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    surprising: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    loaded = 0
    mismatched: List[Tuple[str, Shape, Shape]] = []
    for key, value in model_state.items():
        if key in weights:
            old, shape = tuple(weights[key].shape), tuple(value.shape)
            if old == shape:
                loaded += 1
            else:
                mismatched.append((key, old, shape))
        elif key in new:
            expected[("missing", "detection-only backbone tensors (keep their init)")].append(key)
        elif key.startswith(backbone_prefix):
            surprising[("missing", "backbone tensors the file lacks (random init)")].append(key)
        elif not detector_weights:
            why = f"{_part(key, backbone_prefix)}: a backbone-only file has none (keep their init)"
            expected[("missing", why)].append(key)
        else:
            why = "detector tensors the file lacks, though it holds detector weights"
            surprising[("missing", why)].append(key)
    for key, why in report.dropped:
        expected[("unused", f"dropped: {why}")].append(key)
    for key in weights:
        if key not in model_state:
            if _OLD_ANCHORS in key:
                expected[("unused", "anchors of older Detectron2 files (recomputed)")].append(key)
            else:
                surprising[("unused", "not used by the model")].append(key)
    surprising_groups = _groups(surprising)
    if mismatched:
        mismatched.sort()
        surprising_groups.insert(
            0,
            KeyGroup(
                "shape",
                "other shape in the file than in the model (not loaded)",
                tuple(k for k, _, _ in mismatched),
                tuple((old, shape) for _, old, shape in mismatched),
            ),
        )
    return LoadingSummary(
        source=report.source,
        target=report.target,
        loaded=loaded,
        total=len(model_state),
        resized=len(resized),
        expected=tuple(_groups(expected)),
        surprising=tuple(surprising_groups),
    )
