"""Training checkpoints: plain data, never diverged weights, and resumption past damage."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from omegaconf import ListConfig

from mvit_det.checkpoint import CheckpointError, MViTCheckpointer
from mvit_det.engine import AccumulationTrainer
from mvit_det.model_zoo import get_config

from test_checkpoint import TINY, Detector


def _trained(seed: int = 0):
    """A detector backbone after one AdamW step, with the optimizer built from a LazyConfig."""
    torch.manual_seed(seed)
    model = Detector(**TINY)
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    cfg.model.backbone.bottom_up.update(TINY)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    model.backbone(torch.randn(1, 3, 64, 64))["p2"].sum().backward()
    optimizer.step()
    return model, optimizer


def test_trainer_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    model, optimizer = _trained()
    assert isinstance(optimizer.param_groups[0]["betas"], ListConfig)  # what LazyConfig gives
    trainer = AccumulationTrainer(model, [], optimizer, seed=5)
    raw = io.BytesIO()
    torch.save(trainer.state_dict(), raw)
    raw.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="ListConfig"):
        torch.load(raw, weights_only=True)  # as it was stored before

    MViTCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000000", iteration=0)
    saved = torch.load(tmp_path / "model_0000000.pth", weights_only=True)
    assert saved["trainer"]["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert saved["trainer"]["seed"] == 5 and saved["iteration"] == 0

    restored_model, restored_optimizer = _trained(seed=1)
    restored = AccumulationTrainer(restored_model, [], restored_optimizer, seed=0)
    MViTCheckpointer(restored_model, str(tmp_path), trainer=restored).resume_or_load("")
    assert restored.seed == 5
    for a, b in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(a, b)


def test_diverged_weights_are_never_saved(tmp_path: Path) -> None:
    model, optimizer = _trained()
    checkpointer = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    checkpointer.save("model_0000000", iteration=0)
    with torch.no_grad():
        model.backbone.bottom_up.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as info:
        checkpointer.save("model_0000001", iteration=1)
    message = str(info.value)
    assert "backbone.bottom_up.blocks.1.mlp.fc1.weight" in message
    assert f"The last good checkpoint is {tmp_path / 'model_0000000.pth'}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer = _trained()
    checkpointer = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    for iteration in (1, 3, 5):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    for name in ("model_0000005.pth", "model_0000003.pth"):  # cut short, as by a failed copy
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    resumed = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    with caplog.at_level(logging.WARNING):
        assert resumed.resume_or_load("", resume=True) == {"iteration": 1}
    assert "Cannot resume from" in caplog.text and "model_0000005.pth" in caplog.text
    assert "Resuming from the previous checkpoint" in caplog.text

    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_0000001.pth' is empty"):
        resumed.resume_or_load("", resume=True)


def test_empty_last_checkpoint_file_is_explained(tmp_path: Path) -> None:
    model, optimizer = _trained()
    checkpointer = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    checkpointer.save("model_0000003", iteration=3)
    (tmp_path / "last_checkpoint").write_text("")
    with pytest.raises(CheckpointError) as info:
        checkpointer.resume_or_load("", resume=True)
    assert "last_checkpoint is empty" in str(info.value)
    assert "echo model_0000003.pth >" in str(info.value) and "delete it" in str(info.value)
