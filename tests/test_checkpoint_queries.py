"""Detectron2's ``?matching_heuristics=True`` query on the checkpointer's paths: it works for
models without a registered backbone and is refused, with an explanation, for those with one;
a failed load leaves nothing behind that breaks the next."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import Detector
from mvit_det.checkpoint import BackboneCheckpointer, CheckpointError, CheckpointNotFoundError

TINY = dict(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3))


class Head(nn.Module):
    """A model without a registered backbone: ``head.fc`` and ``head.norm``."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.fc = nn.Linear(3, 2)
        self.head.norm = nn.LayerNorm(2)


def other_names(path: Path) -> dict:
    """Weights of :class:`Head` saved under other prefixes (``fc.*``, ``norm.*``), which only
    name matching by suffix can place."""
    g = torch.Generator().manual_seed(0)
    state = {
        "fc.weight": torch.randn(2, 3, generator=g),
        "fc.bias": torch.randn(2, generator=g),
        "norm.weight": torch.randn(2, generator=g),
        "norm.bias": torch.randn(2, generator=g),
    }
    torch.save({"model": state}, path)
    return state


def test_matching_heuristics_query_places_weights_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    state = other_names(path)
    model = Head()
    before = model.head.fc.weight.detach().clone()
    BackboneCheckpointer(model).load(str(path))  # by name: nothing fits
    assert torch.equal(model.head.fc.weight.detach(), before)
    BackboneCheckpointer(model).load(f"{path}?matching_heuristics=True")
    assert torch.equal(model.head.fc.weight.detach(), state["fc.weight"])
    assert torch.equal(model.head.norm.bias.detach(), state["norm.bias"])
    # False is the default: the query may be given, and changes nothing
    fresh = Head()
    BackboneCheckpointer(fresh).load(f"{path}?matching_heuristics=False")
    assert not torch.equal(fresh.head.fc.weight.detach(), state["fc.weight"])


def test_matching_heuristics_query_is_refused_for_backbone_models(tmp_path: Path) -> None:
    detector = Detector(**TINY)
    path = tmp_path / "d.pth"
    torch.save({"model": detector.state_dict()}, path)
    with pytest.raises(CheckpointError, match="mapped by name.*without the query"):
        BackboneCheckpointer(detector).load(f"{path}?matching_heuristics=True")
    with pytest.raises(CheckpointError, match="matching_heuristics='yes' must be True or False"):
        BackboneCheckpointer(Head()).load(f"{path}?matching_heuristics=yes")


def test_a_failed_load_does_not_break_the_next(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    state = other_names(path)
    model = Head()
    checkpointer = BackboneCheckpointer(model)
    with pytest.raises(CheckpointNotFoundError):
        checkpointer.load(str(tmp_path / "missing.pth?matching_heuristics=True"))
    checkpointer.load(f"{path}?matching_heuristics=True")
    assert torch.equal(model.head.fc.bias.detach(), state["fc.bias"])
