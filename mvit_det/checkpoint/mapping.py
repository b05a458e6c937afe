"""What the weight mappings of all backbone families share: the load report, and finding a
backbone's weights in a checkpoint.

The mappings themselves belong to the families (``adapt_weights`` of each
:class:`~mvit_det.modeling.backbones.registry.BackboneFamily`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

from .errors import ArchitectureMismatchError

__all__ = ["MAX_SHOWN", "LoadReport", "Shape", "group_keys", "split_backbone"]

Shape = Tuple[int, ...]
# How many mismatches an error lists.
MAX_SHOWN = 8


def group_keys(keys: Sequence[str]) -> List[str]:
    """
    Compresses key lists for reports, e.g. ``blocks.{0-3,7}.attn.{rel_pos_h,rel_pos_w}``: keys
    that differ only in their last component are merged first, then keys that differ only in
    their first number.
    """
    lasts: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        stem, dot, last = key.rpartition(".")
        lasts[stem + dot].append(last)
    merged = []
    for stem, names in lasts.items():
        if stem and len(names) > 1:
            merged.append(stem + "{" + ",".join(names) + "}")
        else:
            merged += [stem + name for name in names]
    numbers: Dict[Tuple[str, str], List[int]] = defaultdict(list)
    for key in merged:
        m = re.search(r"\d+", key)
        if m is None:
            numbers[(key, "")] = []
        else:
            numbers[(key[: m.start()], key[m.end() :])].append(int(m.group()))
    out = []
    for (head, tail), values in numbers.items():
        if not values:
            out.append(head)
            continue
        runs: List[str] = []
        for n in sorted(set(values)):
            if runs and runs[-1].rpartition("-")[2] == str(n - 1):
                runs[-1] = f"{runs[-1].partition('-')[0]}-{n}"
            else:
                runs.append(str(n))
        joined = ",".join(runs)
        out.append(head + (joined if len(values) == 1 else "{" + joined + "}") + tail)
    return out


@dataclass
class LoadReport:
    """
    What happened to each backbone tensor when mapping a checkpoint onto a model.

    Attributes:
        source: description of the file.
        layout: the checkpoint's layout, in the family's words (e.g. "timm (staged)").
        target: description of the model's backbone and its name prefix.
        loaded: model keys taken from the checkpoint as they are.
        resized: (model key, checkpoint shape, model shape) of interpolated position tables.
        dropped: (checkpoint key, reason) of classification-only weights.
        new: model keys the checkpoint has no counterpart for by design (e.g. detection-only
            output norms, absent from ImageNet checkpoints); they keep their initialisation.
        missing: backbone keys of the model the checkpoint should have had but does not.
        passed_on: number of non-backbone tensors (FPN, heads...) left to the standard loader.
    """

    source: str
    layout: str
    target: str
    loaded: List[str] = field(default_factory=list)
    resized: List[Tuple[str, Shape, Shape]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    passed_on: int = 0

    def format(self) -> str:
        """The report as printed by the checkpointer and tools/convert_checkpoint.py."""
        lines = [
            f"Checkpoint {self.source}",
            f"  layout: {self.layout}; into {self.target}",
            f"  loaded  : {len(self.loaded)} backbone tensors",
        ]
        by_change: Dict[Tuple[Shape, Shape], List[str]] = defaultdict(list)
        for key, old, new in self.resized:
            by_change[(old, new)].append(key)
        lines.append(f"  resized : {len(self.resized)} (interpolated position tables)")
        for (old, new), keys in by_change.items():
            lines += [f"    {k}: {list(old)} -> {list(new)}" for k in group_keys(keys)]
        by_reason: Dict[str, List[str]] = defaultdict(list)
        for key, reason in self.dropped:
            by_reason[reason].append(key)
        lines.append(f"  dropped : {len(self.dropped)} (not used by detection)")
        for reason, keys in by_reason.items():
            lines.append(f"    {', '.join(group_keys(keys))}: {reason}")
        lines.append(f"  new     : {len(self.new)} (detection-only, keep their initialisation)")
        lines += [f"    {k}" for k in group_keys(self.new)]
        lines.append(f"  missing : {len(self.missing)}")
        lines += [f"    {k}" for k in group_keys(self.missing)]
        lines.append(f"  other   : {self.passed_on} non-backbone tensors for the rest of the model")
        return "\n".join(lines)


def split_backbone(
    state: Mapping[str, torch.Tensor], stem: str, backbone: str, source: str
) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """
    Separates a backbone's weights from the rest of a checkpoint (``module.`` prefixes of
    DataParallel checkpoints removed first).

    Args:
        state: checkpoint weights.
        stem: the name of the backbone's first weight (e.g. "patch_embed.proj.weight"); what
            precedes it is the backbone's prefix in the checkpoint.
        backbone: what the backbone is called in errors ("MViT", "ViL").
        source: description of the checkpoint, for errors.

    Returns:
        (the backbone's prefix in the checkpoint, "" for a bare backbone; its weights without
        the prefix; the other weights).

    Raises:
        ArchitectureMismatchError: no name ends with ``stem``, or names under different prefixes
            do (``module.x`` and ``x`` included).
    """
    # Before "module." is removed, so that "module.x" and "x" count as two backbones.
    prefixes = sorted({k[: -len(stem)] for k in state if k.endswith(stem)})
    if len(prefixes) > 1:
        shown = ", ".join(repr(p) if p else "'' (no prefix)" for p in prefixes)
        raise ArchitectureMismatchError(
            f"{source} holds several {backbone} backbones, under the prefixes {shown}, and it "
            "is not clear which one to load: save the weights under one prefix in a file of "
            "their own and load that"
        )
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    prefixes = [p[len("module.") :] if p.startswith("module.") else p for p in prefixes]
    if not prefixes:
        examples = ", ".join(list(state)[:5])
        raise ArchitectureMismatchError(
            f"{source} holds no {backbone} backbone weights (no '*{stem}'; its keys look like: "
            f"{examples}). Wrong file, or weights of another architecture"
        )
    prefix = prefixes[0]
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return prefix, inside, {k: v for k, v in state.items() if not k.startswith(prefix)}
