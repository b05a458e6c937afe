"""Damaged files of every container (random bit flips, changed bytes, truncations, seeded): each
read gives weights or a CheckpointError saying the file is damaged (cut off, for truncations) or
not a checkpoint, never another exception, and never "unsafe" unless the damage really names an
existing Python object; resuming skips a damaged newest checkpoint for the previous one."""

from __future__ import annotations

import importlib.util
import io
import logging
import pickle
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from mvit_det.checkpoint import (
    DamagedCheckpointError,
    MViTCheckpointer,
    NotACheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from mvit_det.tools import convert_checkpoint as convert_tool

from helpers import Detector
from test_checkpoint import TINY

SEED = 20260611
MUTATIONS_PER_CONTAINER = 600


def _weights() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g).double(),
        "norm.weight": torch.randn(2, 2, generator=g).half(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
    }


def _containers() -> Dict[str, bytes]:
    """The same weights in every container mvit_det reads."""
    weights = _weights()
    arrays = {k: v.numpy() for k, v in weights.items()}
    files = {}
    for name, zipped in (("torch_zip", True), ("torch_legacy", False)):
        raw = io.BytesIO()
        torch.save({"model": weights, "iteration": 7}, raw, _use_new_zipfile_serialization=zipped)
        files[name] = raw.getvalue()
    for protocol in (2, 4, 5):
        data = {"model": arrays, "__author__": "fuzz", "names": ["a", "b"], "step": np.float64(1)}
        files[f"pickle{protocol}"] = pickle.dumps(data, protocol=protocol)
    files["safetensors"] = save_safetensors(weights)
    return files


def _mutate(data: bytes, rng: random.Random, container: str) -> Tuple[str, bytes]:
    """One random damage: a flipped bit, a changed byte or a truncation. A third of the flips
    and changes of zip files land in the zip directory at the end of the file."""
    kind = rng.choice(("flip", "byte", "truncate"))
    if kind == "truncate":
        size = rng.randrange(len(data))
        return f"truncate to {size}", data[:size]
    if container == "torch_zip" and rng.random() < 1 / 3:
        position = rng.randrange(max(len(data) - 400, 0), len(data))
    else:
        position = rng.randrange(len(data))
    damaged = bytearray(data)
    if kind == "flip":
        bit = rng.randrange(8)
        damaged[position] ^= 1 << bit
        return f"flip bit {bit} of byte {position}", bytes(damaged)
    damaged[position] = rng.choice([b for b in range(256) if b != data[position]])
    return f"byte {position} := {damaged[position]}", bytes(damaged)


def _names_an_existing_object(name: str) -> bool:
    """The rule for "unsafe" on a damaged file: the name it refused is a Python object that
    exists (identifiers, an installed module, and the attribute in it when it is imported)."""
    module, _, attribute = name.rpartition(".")
    parts = module.split(".")
    if not module or not all(p.isidentifier() for p in parts + [attribute]):
        return False
    if module in sys.modules:
        return hasattr(sys.modules[module], attribute)
    return importlib.util.find_spec(parts[0]) is not None


def _read(path: Path) -> Tuple[str, str]:
    """Reads ``path``; returns the outcome ("weights" or the error class) and the message."""
    try:
        ckpt = read_checkpoint(str(path))
    except UnsafeCheckpointError as e:
        names = re.search(r"pickles Python objects \((.*?)\)", str(e)).group(1)
        return "unsafe", names
    except (DamagedCheckpointError, NotACheckpointError) as e:
        return type(e).__name__, str(e)
    assert ckpt.state and all(isinstance(v, torch.Tensor) for v in ckpt.state.values())
    return "weights", ""


def test_damaged_files_give_weights_or_a_damage_error(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    outcomes: Dict[str, Counter] = {}
    for container, data in _containers().items():
        path = tmp_path / f"fuzz.{container}"
        path.write_bytes(data)
        assert _read(path) == ("weights", "")
        counts = outcomes.setdefault(container, Counter())
        for _ in range(MUTATIONS_PER_CONTAINER):
            what, damaged = _mutate(data, rng, container)
            path.write_bytes(damaged)
            try:
                outcome, message = _read(path)
            except Exception as e:  # any other exception type is a failure
                raise AssertionError(f"{container}, {what}: {type(e).__name__}: {e}") from e
            if what.startswith("truncate") and len(damaged) >= 16:  # long enough to recognise
                assert outcome == "TruncatedCheckpointError", f"{container}, {what}: {message}"
            if outcome == "unsafe":
                assert what.startswith(("flip", "byte")), f"{container}, {what}: {message}"
                for name in message.split(", "):
                    assert _names_an_existing_object(name), f"{container}, {what}: {name}"
            else:
                assert "\n" not in message and len(message) < 1000, f"{container}, {what}"
            counts[outcome] += 1
    total = sum(sum(c.values()) for c in outcomes.values())
    assert total == 6 * MUTATIONS_PER_CONTAINER
    for container, counts in outcomes.items():  # the damage was noticed, most of the time
        assert counts["DamagedCheckpointError"] + counts["TruncatedCheckpointError"] > 200, (
            container,
            counts,
        )
    logging.getLogger(__name__).info(f"fuzz outcomes: {outcomes}")


def _damaging(rng: random.Random, data: bytes, container: str, path: Path) -> List[bytes]:
    """Damaged versions of ``data`` that read_checkpoint refuses as damaged."""
    found = []
    while len(found) < 4:
        _, damaged = _mutate(data, rng, container)
        path.write_bytes(damaged)
        if _read(path)[0] in ("DamagedCheckpointError", "TruncatedCheckpointError"):
            found.append(damaged)
    return found


def test_resume_skips_a_damaged_newest_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Training checkpoints damaged at random, the zip directory included: resuming falls back
    to the previous checkpoint; the converter says "error:" in one line and exits with 2."""
    rng = random.Random(SEED + 1)
    torch.manual_seed(0)
    model = Detector(**TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpointer = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    checkpointer.save("model_0000001", iteration=1)
    previous = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    checkpointer.save("model_0000003", iteration=3)
    newest = tmp_path / "model_0000003.pth"
    data = newest.read_bytes()
    scratch = tmp_path / "scratch" / "probe.pth"
    scratch.parent.mkdir()
    for damaged in _damaging(rng, data, "torch_zip", scratch):
        newest.write_bytes(damaged)
        fresh = Detector(**TINY)
        resumed = MViTCheckpointer(
            fresh, str(tmp_path), optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1)
        )
        assert resumed.resume_or_load("", resume=True) == {"iteration": 1}
        for name, value in fresh.state_dict().items():
            assert torch.equal(value, previous[name]), name
        assert convert_tool.main([str(newest), str(tmp_path / "out.pkl"), "--model", "T"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "damaged" in errors[0], errors
