"""Guarantees of docs/reliability.md checked in this process, without launching the training
tool: non-finite weights, files holding several backbones, pinned digests, the converter's output
checks, write failures and opt-ins, resumption (grad scaler, other numbers of processes, other
shapes, a missing newest checkpoint), the loader's stream rule, an interrupted run that must end
as the uninterrupted one (data, seed, schedule, metrics.json and TensorBoard events), and the
training tool's checks and process handling."""

from __future__ import annotations

import argparse
import builtins
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from omegaconf import DictConfig
from torch.multiprocessing import ProcessExitedException

from mvit_det import MViT, ViL
from mvit_det.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    ChecksumMismatchError,
    MViTCheckpointer,
    adapt_backbone_state_dict,
    load_object,
    read_checkpoint,
)
from mvit_det.data.shapes import shapes_dataset_files
from mvit_det.engine import AccumulationTrainer, ResumableTrainLoader, train_net
from mvit_det.engine.train_net import UsageError
from mvit_det.model_zoo import get_config
from mvit_det.tools import analyze
from mvit_det.tools import convert_checkpoint as convert_tool

from helpers import REPO, TINY_VIL
from test_checkpoint import TINY, Detector, official_state
from test_train_net import DEMO
from test_train_net import TINY as TINY_ARGS


def _tiny_config(folder: Path) -> str:
    """A LazyConfig file whose model is an FPN over the tiny MViT, for the converter."""
    path = folder / "tiny_config.py"
    path.write_text(
        "from detectron2.config import LazyCall as L\n"
        "from mvit_det import MViT, build_mvit_fpn\n"
        f"model = L(build_mvit_fpn)(bottom_up=L(MViT)(**{TINY!r}))\n"
    )
    return str(path)


def _official_file(path: Path, **extra: Any) -> Path:
    torch.save({"model_state": official_state(**TINY), **extra}, path)
    return path


# ---------------------------------------------------------------------------------------------
# Non-finite weights: never saved, and named by the converter.


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_weights_are_never_saved(tmp_path: Path, value: float) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))  # with an integer buffer
    checkpointer = MViTCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    with torch.no_grad():
        model[0].bias[1] = value
    with pytest.raises(
        FloatingPointError, match=r"not saving .*1 of the model's 7 tensors .*0\.bias"
    ):
        checkpointer.save("model_0000001", iteration=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_converter_warns_of_infinite_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: float
) -> None:
    state = official_state(**TINY)
    state["blocks.2.attn.proj.weight"][0, 1] = value
    torch.save({"model_state": state}, tmp_path / "inf.pth")
    out = tmp_path / "out.pth"
    argv = [str(tmp_path / "inf.pth"), str(out), "--model", _tiny_config(tmp_path)]
    assert convert_tool.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: 1 tensors hold NaN or Inf values: bottom_up.blocks.2.attn.proj.weight" in err
    assert out.exists()


# ---------------------------------------------------------------------------------------------
# Weight files holding several backbones.


def _prefixed(state: Dict[str, torch.Tensor], *prefixes: str) -> Dict[str, torch.Tensor]:
    return {p + k: v for p in prefixes for k, v in state.items()}


@pytest.mark.parametrize(
    "prefixes, shown",
    [
        (("backbone.bottom_up.", "model.backbone.bottom_up."), "'backbone.bottom_up.', 'model"),
        (("", "teacher."), "'' (no prefix), 'teacher.'"),
        (("module.", ""), "'' (no prefix), 'module.'"),  # DataParallel and bare copies
    ],
)
@pytest.mark.parametrize("kind", ["MViT", "ViL"])
def test_several_backbones_are_refused(kind: str, prefixes: tuple, shown: str) -> None:
    backbone = MViT(**TINY) if kind == "MViT" else ViL(**TINY_VIL)
    own = backbone.state_dict()
    state = _prefixed(own, *prefixes)
    with pytest.raises(ArchitectureMismatchError) as info:
        adapt_backbone_state_dict(state, backbone, "backbone.bottom_up.", source="'two.pth'")
    message = str(info.value)
    assert f"'two.pth' holds several {kind} backbones, under the prefixes {shown}" in message
    assert "not clear which one to load" in message
    # One copy, under any prefix, DataParallel's included, loads.
    for prefix in ("module.backbone.bottom_up.", "model.", ""):
        mapped, report = adapt_backbone_state_dict(
            _prefixed(own, prefix), backbone, "backbone.bottom_up."
        )
        assert report.missing == [] and mapped.keys() >= {"backbone.bottom_up." + k for k in own}


def test_checkpointer_refuses_a_file_with_two_backbones(tmp_path: Path) -> None:
    state = official_state(**TINY)
    path = tmp_path / "distilled.pth"
    torch.save({"model": _prefixed(state, "backbone.bottom_up.", "teacher.backbone.")}, path)
    with pytest.raises(ArchitectureMismatchError, match="distilled.pth.* holds several MViT"):
        MViTCheckpointer(Detector(**TINY)).load(str(path))


# ---------------------------------------------------------------------------------------------
# Pinned digests of local files, and the converter's --sha256.


def test_pinned_digest_of_a_local_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _official_file(tmp_path / "weights.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()

    assert read_checkpoint(f"{path}#sha256={digest.upper()}").kind == "official"
    assert read_checkpoint(str(path), sha256=digest).kind == "official"
    with pytest.raises(ChecksumMismatchError, match=f"SHA-256 {digest}, not the expected {wrong}"):
        read_checkpoint(f"{path}#sha256={wrong}")
    with pytest.raises(ChecksumMismatchError, match="not the expected"):
        load_object(str(path), sha256=wrong)
    with pytest.raises(ChecksumMismatchError, match="two different SHA-256 digests"):
        read_checkpoint(f"{path}#sha256={digest}", sha256=wrong)
    with pytest.raises(CheckpointError, match="must be followed by the 64 hex digits"):
        read_checkpoint(f"{path}#sha256=abc")
    # as train.init_checkpoint
    with pytest.raises(ChecksumMismatchError):
        MViTCheckpointer(Detector(**TINY)).load(f"{path}#sha256={wrong}")
    MViTCheckpointer(Detector(**TINY)).load(f"{path}#sha256={digest}")

    out = tmp_path / "out.pkl"
    config = _tiny_config(tmp_path)
    assert convert_tool.main([str(path), str(out), "--model", config, "--sha256", wrong]) == 2
    err = capsys.readouterr().err
    assert re.search(f"^error: .*not the expected {wrong}", err, re.M) and not out.exists()
    assert convert_tool.main([str(path), str(out), "--model", config, "--sha256", digest]) == 0
    assert out.exists()


# ---------------------------------------------------------------------------------------------
# The converter: output checks, failed writes, the trust opt-in.


def _deny_writes_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``folder`` read-only (mode 0o555); where the process could still write there (as
    root), answers writes in it as the kernel answers other users: EACCES."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return
    real_access, real_open = os.access, builtins.open

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if mode & os.W_OK and os.path.abspath(path) == str(folder):
            return False
        return real_access(path, mode, **kwargs)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        inside = isinstance(file, (str, Path)) and Path(file).parent == folder
        if inside and any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", open_)


def test_converter_refuses_a_read_only_folder_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    _deny_writes_in(folder, monkeypatch)
    missing_input = str(tmp_path / "nowhere.pth")  # reading it would fail with another message
    assert convert_tool.main([missing_input, str(folder / "out.pkl"), "--model", "T"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: the folder of output {str(folder / 'out.pkl')!r} is not writable\n"


def test_converter_write_failure_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the output is flushed: one error line, status 2, the previous file
    untouched and no temporary file left."""
    path = _official_file(tmp_path / "in.pth")
    out = tmp_path / "out.pkl"
    out.write_bytes(b"previous version")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert convert_tool.main([str(path), str(out), "--model", _tiny_config(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: [Errno 28] cannot write {str(out)!r}: No space left on device"]
    assert out.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth", "out.pkl", "tiny_config.py"]


class _WritesMarker:
    """Unpickling this object creates a file, as code in an untrusted checkpoint could."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_trust_opt_ins_unpickle_in_full(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The converter's --trust-checkpoint and trust=True of load_object and MViTCheckpointer
    unpickle the objects of a file; the weights in it still load."""
    marker = tmp_path / "code_ran"
    path = _official_file(tmp_path / "trusted.pth", x=_WritesMarker(marker))
    out = tmp_path / "out.pkl"
    argv = [str(path), str(out), "--model", _tiny_config(tmp_path)]
    assert convert_tool.main(argv) == 0 and not marker.exists()  # left out, never run
    assert convert_tool.main(argv + ["--trust-checkpoint"]) == 0 and marker.exists()
    assert out.exists()
    capsys.readouterr()

    marker.unlink()
    load_object(str(path), trust=True)
    assert marker.exists()
    marker.unlink()
    detector = Detector(**TINY)
    MViTCheckpointer(detector, trust=True).load(str(path))
    assert marker.exists()
    expected = official_state(**TINY)["blocks.1.attn.qkv.weight"]
    assert torch.equal(detector.backbone.bottom_up.blocks[1].attn.qkv.weight, expected)


def test_training_tool_trust_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shapes_datasets_root: str
) -> None:
    """--trust-checkpoint reaches the checkpointer of --eval-only (the evaluation itself is
    left out)."""
    marker = tmp_path / "code_ran"
    path = _official_file(tmp_path / "trusted.pth", x=_WritesMarker(marker))
    loaded: List[torch.Tensor] = []

    def no_evaluation(cfg: DictConfig, model: nn.Module) -> Dict[str, Any]:
        loaded.append(model.backbone.bottom_up.blocks[1].attn.qkv.weight.detach().clone())
        return {}

    monkeypatch.setattr(train_net, "do_test", no_evaluation)
    argv = ["--config-file", str(REPO / DEMO), "--eval-only", "--trust-checkpoint"] + TINY_ARGS
    argv += [f"train.output_dir={tmp_path / 'out'}", f"train.init_checkpoint={path}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA: training falls back to the CPU
        assert train_net.run_cli(argv) == 0
    assert marker.exists()
    assert torch.equal(loaded[0].cpu(), official_state(**TINY)["blocks.1.attn.qkv.weight"])


def test_failed_checkpoint_writes_keep_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while a checkpoint, then while ``last_checkpoint``, is flushed: an OSError
    naming the file, the previous tag kept, no temporary file left."""
    model = nn.Linear(3, 2)
    checkpointer = MViTCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    flushes: List[int] = []

    def disk_full_after(successful: int) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            flushes.append(fd)
            if len(flushes) > successful:
                raise OSError(errno.ENOSPC, "No space left on device")

        return fsync

    monkeypatch.setattr(os, "fsync", disk_full_after(0))
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write '.*model_0000001.pth'"):
        checkpointer.save("model_0000001", iteration=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]

    flushes.clear()
    monkeypatch.setattr(os, "fsync", disk_full_after(1))  # the checkpoint, not its tag
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write '.*last_checkpoint'"):
        checkpointer.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint",
        "model_0000000.pth",
        "model_0000002.pth",
    ]


def test_failed_json_report_write_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/analyze.py's JSON report, when the disk fills as it is flushed."""
    output = tmp_path / "analysis.json"
    output.write_text('{"previous": true}')

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    argv = ["--config", str(REPO / DEMO), "--device", "cpu", "--backbone", "--tasks", "parameter"]
    argv += ["--output", str(output), "--opts"] + TINY_ARGS
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write '.*analysis.json'"):
        analyze.main(argv)
    assert output.read_text() == '{"previous": true}' and os.listdir(tmp_path) == [output.name]


# ---------------------------------------------------------------------------------------------
# Resuming: fallbacks and refusals of the checkpointer.


def test_missing_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = nn.Linear(3, 2)
    checkpointer = MViTCheckpointer(model, str(tmp_path))
    for iteration in (1, 3):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    (tmp_path / "model_0000003.pth").unlink()  # e.g. deleted by hand to free space
    with caplog.at_level(logging.WARNING):
        assert MViTCheckpointer(model, str(tmp_path)).resume_or_load("") == {"iteration": 1}
    assert "Cannot resume from" in caplog.text and "model_0000003.pth" in caplog.text


class _DetectorWithHead(nn.Module):
    """The tiny detector with a classifier of ``num_classes`` outputs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.detector = Detector(**TINY)
        self.cls_score = nn.Linear(8, num_classes)


@pytest.mark.parametrize("with_mvit", [True, False])
def test_resuming_a_model_of_other_shapes_is_refused(tmp_path: Path, with_mvit: bool) -> None:
    def build(num_classes: int) -> nn.Module:
        return _DetectorWithHead(num_classes) if with_mvit else nn.Linear(8, num_classes)

    saved = build(3)
    MViTCheckpointer(saved, str(tmp_path), optimizer=torch.optim.SGD(saved.parameters(), 0.1)).save(
        "model_0000004", iteration=4
    )
    other = build(5)
    checkpointer = MViTCheckpointer(
        other, str(tmp_path), optimizer=torch.optim.SGD(other.parameters(), 0.1)
    )
    name = "cls_score.weight" if with_mvit else "weight"
    with pytest.raises(CheckpointError) as info:
        checkpointer.resume_or_load("", resume=True)
    message = str(info.value)
    assert f"cannot resume from {tmp_path / 'model_0000004.pth'}" in message
    assert f"{name}: checkpoint [3, 8] vs model [5, 8]" in message
    assert "model.roi_heads.num_classes" in message
    # As initial weights (fine-tuning for other classes) the same file loads, other shapes left.
    checkpointer.resume_or_load(str(tmp_path / "model_0000004.pth"), resume=False)
    if with_mvit:
        loaded, trained = other.detector.backbone, saved.detector.backbone
        assert torch.equal(
            loaded.bottom_up.blocks[2].mlp.fc1.weight, trained.bottom_up.blocks[2].mlp.fc1.weight
        )


# ---------------------------------------------------------------------------------------------
# Resuming: the trainer's state.


class _OverflowOnce(nn.Module):
    """A regression whose first loss is large enough for its scaled float16 gradients to
    overflow, so that loss scaling backs off once."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.calls = 0

    def forward(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.calls += 1
        loss = self.linear(batch).float().pow(2).mean()
        return {"loss": loss * 1e3 if self.calls == 1 else loss}


def _amp_trainer() -> AccumulationTrainer:
    torch.manual_seed(0)
    model = _OverflowOnce()
    batches = itertools.repeat(torch.randn(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return AccumulationTrainer(model, batches, optimizer, amp=True, amp_dtype=torch.float16)


def test_grad_scaler_state_is_restored(tmp_path: Path) -> None:
    trainer = _amp_trainer()
    with EventStorage(0) as trainer.storage:
        for trainer.iter in range(3):
            trainer.run_step()
    # backed off once (the overflow), then two steps without overflow
    assert trainer.grad_scaler.get_scale() == 2.0**15
    assert trainer.grad_scaler.state_dict()["_growth_tracker"] == 2
    MViTCheckpointer(trainer.model, str(tmp_path), trainer=trainer).save("model_0000002")

    resumed = _amp_trainer()
    MViTCheckpointer(resumed.model, str(tmp_path), trainer=resumed).resume_or_load("")
    assert resumed.iter == 2
    assert resumed.grad_scaler.get_scale() == 2.0**15
    assert resumed.grad_scaler.state_dict()["_growth_tracker"] == 2


# Landscape and portrait images, so that batches group by aspect ratio.
RECORDS = [
    {"image_id": i, "file_name": f"{i}.jpg", "width": 200 if i % 3 else 120, "height": 160}
    for i in range(10)
]


def _augment(record: Dict[str, Any]) -> Dict[str, Any]:
    """A mapper drawing from the global RNGs, as augmentations do."""
    return {**record, "draw": (np.random.uniform(), torch.rand(1).item())}


def _stream(loader: ResumableTrainLoader, images: int) -> List[tuple]:
    """(image id, augmentation draws) of the next ``images`` images of a loader of batch 1."""
    batches = itertools.islice(iter(loader), images)
    return [(batch[0]["image_id"], batch[0]["draw"]) for batch in batches]


def _rank_loader(rank: int, world_size: int, seed: int = 7) -> ResumableTrainLoader:
    return ResumableTrainLoader(
        RECORDS, _augment, 1, seed, aspect_ratio_grouping=False, rank=rank, world_size=world_size
    )


def test_stream_rule_image_g_is_permutation_of_its_epoch() -> None:
    """Image g of the stream is permutation(seed, g // N)[g % N], augmented from (seed, g):
    rank r of W reads elements r, r + W, r + 2W, ... of that one stream."""
    stream = _stream(_rank_loader(0, 1), 30)
    ids = [image for image, _ in stream]
    epochs = [ids[e * 10 : (e + 1) * 10] for e in range(3)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)  # a permutation per epoch
    assert len({tuple(epoch) for epoch in epochs}) == 3  # a new one each epoch
    assert [image for image, _ in _stream(_rank_loader(0, 1, seed=8), 10)] != epochs[0]
    for world_size in (2, 3):
        for rank in range(world_size):
            per_rank = _stream(_rank_loader(rank, world_size), 30 // world_size)
            assert per_rank == stream[rank::world_size], (rank, world_size)


def _trainer_with(loader: ResumableTrainLoader) -> AccumulationTrainer:
    model = nn.Linear(3, 1)
    return AccumulationTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))


def _resume_positions(positions: List[Dict[str, Any]], loader: ResumableTrainLoader) -> None:
    trainer = _trainer_with(loader)
    state = {"iteration": 3, "optimizer": trainer.optimizer.state_dict(), "data": positions}
    trainer.load_state_dict(state)


def test_resuming_with_fewer_processes_continues_after_the_images_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Saved by 2 processes that read 4 images each, resumed by 1: it reads on from image 8."""
    stream = _stream(_rank_loader(0, 1), 20)
    old = [_rank_loader(rank, 2) for rank in range(2)]
    for loader in old:
        _stream(loader, 4)
    positions = [loader.state_dict() for loader in old]
    assert [p["world_size"] for p in positions] == [2, 2]

    resumed = _rank_loader(0, 1, seed=99)  # the seed comes from the checkpoint
    with caplog.at_level(logging.WARNING):
        _resume_positions(positions, resumed)
    assert "written by 2 training processes and this run has 1" in caplog.text
    assert "after the 8 images read" in caplog.text
    assert _stream(resumed, 6) == stream[8:14]


def test_resuming_with_more_processes_continues_after_the_images_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Saved by 1 process that read 7 images, resumed by 2: no image is read again; the ranks
    start at the first multiple of 2 at or after 7 (image 8 and image 9)."""
    stream = _stream(_rank_loader(0, 1), 20)
    old = _rank_loader(0, 1)
    _stream(old, 7)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        resumed = _rank_loader(rank, 2, seed=99)
        _resume_positions([old.state_dict()], resumed)
        assert _stream(resumed, 4) == stream[8 + rank : 16 : 2], rank


# ---------------------------------------------------------------------------------------------
# Which loaders are resumable.


def _some_loader(total_batch_size: int, name: str) -> Dict[str, Any]:
    return {"total_batch_size": total_batch_size, "name": name}


def test_only_detectron2_default_loader_is_resumable(
    shapes_datasets_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    with caplog.at_level(logging.WARNING):
        loader = train_net.build_train_loader(cfg, 2, seed=5)
    assert isinstance(loader, ResumableTrainLoader) and "restarts" not in caplog.text
    assert (loader.batch_size, loader.seed, len(loader.dataset)) == (2, 5, 8)

    with_sampler = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    with_sampler.dataloader.train.sampler = L(TrainingSampler)(size=8, seed=1)
    other_function = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    other_function.dataloader.train = L(_some_loader)(total_batch_size=4, name="x")
    for cfg in (with_sampler, other_function):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loader = train_net.build_train_loader(cfg, 2, seed=5)
        assert not isinstance(loader, ResumableTrainLoader)
        assert "a resumed run restarts its data order" in caplog.text
    assert loader == {"total_batch_size": 2, "name": "x"}  # as configured, at the micro-batch


# ---------------------------------------------------------------------------------------------
# An interrupted run, in this process: a linear model on mapped records.


def _records_mapper(record: Dict[str, Any]) -> Dict[str, Any]:
    return {**record, "x": torch.randn(3), "y": torch.randn(())}


class _NoisyRegression(nn.Module):
    """Squared error over a random subset of the batch: draws from the global RNG each step, as
    proposal sampling and drop path do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, batch: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        x = torch.stack([s["x"] for s in batch])  # (B, 3)
        y = torch.stack([s["y"] for s in batch])  # (B,)
        keep = (torch.rand(len(batch)) > 0.3).float()
        return {"loss_mse": (keep * (self.linear(x).squeeze(1) - y) ** 2).mean()}


def _run(
    folder: Path, seed: int, resume: bool, monkeypatch: pytest.MonkeyPatch, random_seed: int = 0
) -> None:
    """8 iterations of AdamW with warmup and two LR steps, a checkpoint every 2, a metrics
    record and TensorBoard scalars every iteration; ``random_seed`` is the seed drawn for
    ``seed`` < 0."""
    folder.mkdir(exist_ok=True)  # as the training tool does before it trains
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    del cfg.dataloader["evaluator"]
    cfg.dataloader.train.total_batch_size = 2
    cfg.train.update(output_dir=str(folder), max_iter=8, seed=seed, device="cpu")
    cfg.train.update(eval_period=0, log_period=1)
    cfg.train.amp.enabled = False
    cfg.train.checkpointer.period = 2
    cfg.optimizer.lr = 0.05
    cfg.lr_multiplier.scheduler.milestones = [3, 6]
    cfg.lr_multiplier.warmup_length = 2 / 8

    def records_loader(cfg: DictConfig, batch: int, seed: int) -> ResumableTrainLoader:
        return ResumableTrainLoader(RECORDS, _records_mapper, batch, seed)

    monkeypatch.setattr(train_net, "build_train_loader", records_loader)
    monkeypatch.setattr(comm, "shared_random_seed", lambda: random_seed)
    torch.manual_seed(0)
    train_net.do_train(cfg, resume=resume, model=_NoisyRegression())


def _logged(folder: Path) -> List[int]:
    with open(folder / "metrics.json") as f:
        return [json.loads(line)["iteration"] for line in f]


def _tensorboard_steps(folder: Path) -> List[int]:
    """The steps of the ``total_loss`` scalars as TensorBoard shows them: events of an earlier
    file at or after the step where a later file says the session restarted are purged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def first_wall_time(path: Path) -> float:
        return next(iter(EventFileLoader(str(path)).Load())).wall_time

    # File names hold whole seconds only: order the files by their first event.
    files = sorted(folder.glob("events.out.tfevents.*"), key=first_wall_time)
    ordered = folder / "tensorboard_in_order"
    ordered.mkdir()
    for i, path in enumerate(files):
        shutil.copy(path, ordered / f"events.out.tfevents.{i:04d}")
    events = EventAccumulator(str(ordered), purge_orphaned_data=True)
    events.Reload()
    return [event.step for event in events.Scalars("total_loss")]


def test_interrupted_run_ends_as_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with a random seed (train.seed=-1) is rolled back to its checkpoint of iteration 3,
    as a run killed after it leaves its folder, and resumed: weights, metrics.json and
    TensorBoard scalars are those of a run that never stopped."""
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    _run(interrupted, -1, False, monkeypatch, random_seed=1234)
    for name in ("model_0000005.pth", "model_0000007.pth", "model_final.pth"):
        (interrupted / name).unlink()
    (interrupted / "last_checkpoint").write_text("model_0000003.pth")
    saved = torch.load(interrupted / "model_0000003.pth", weights_only=True)
    assert saved["trainer"]["seed"] == 1234
    assert _logged(interrupted) == list(range(8))  # with the records after the checkpoint

    _run(interrupted, -1, True, monkeypatch, random_seed=5678)  # the saved seed is used
    _run(whole, 1234, False, monkeypatch)
    expected = torch.load(whole / "model_final.pth", weights_only=True)
    final = torch.load(interrupted / "model_final.pth", weights_only=True)
    assert final["iteration"] == expected["iteration"] == 7
    for name, value in expected["model"].items():
        assert torch.equal(final["model"][name], value), name
    assert final["trainer"]["data"] == expected["trainer"]["data"]
    assert _logged(interrupted) == _logged(whole) == list(range(8))
    assert _tensorboard_steps(interrupted) == _tensorboard_steps(whole) == list(range(8))


def test_negative_seed_draws_a_random_one(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: List[int] = []

    class Stop(Exception):
        pass

    def record_seed(cfg: DictConfig, batch: int, seed: int) -> None:
        seeds.append(seed)
        raise Stop

    monkeypatch.setattr(train_net, "build_train_loader", record_seed)
    for seed in (-1, -1, 12):
        cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
        cfg.train.update(seed=seed, device="cpu")
        with pytest.raises(Stop):
            train_net.do_train(cfg, model=_NoisyRegression())
    assert seeds[2] == 12 and seeds[0] != seeds[1] and min(seeds) >= 0


# ---------------------------------------------------------------------------------------------
# The training tool: output folder, processes, CPU fallback.


def test_read_only_output_folder_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    _deny_writes_in(folder, monkeypatch)
    with pytest.raises(UsageError) as info:
        with train_net.training_output_dir(str(folder)):
            raise AssertionError("the folder was accepted")
    assert str(info.value).startswith(f"cannot write to the output directory {str(folder)!r}")
    assert "Permission denied" in str(info.value)


def test_errors_of_training_processes_become_the_tool_status(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    shapes_datasets_root: str,
) -> None:
    def failing(error: Exception) -> Callable[[argparse.Namespace], None]:
        def main(args: argparse.Namespace) -> None:
            raise error

        return main

    for error, status in ((UsageError("bad data"), 2), (FloatingPointError("diverged"), 1)):
        monkeypatch.setattr(train_net, "main", failing(error))
        with pytest.raises(SystemExit) as info:
            train_net._main_reporting_errors(argparse.Namespace())
        assert info.value.code == status
        assert capsys.readouterr().err == f"error: {error}\n"
    monkeypatch.setattr(train_net, "main", failing(KeyError("bug")))
    with pytest.raises(KeyError):  # an unexpected error keeps its traceback
        train_net._main_reporting_errors(argparse.Namespace())

    def spawned_process_exits(*args: Any, **kwargs: Any) -> None:
        raise ProcessExitedException("process 1 exited", 1, 4321, exit_code=2)

    monkeypatch.setattr(train_net, "launch", spawned_process_exits)
    processes = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2
    argv = ["--config-file", str(REPO / DEMO), "--num-gpus", str(processes)] + TINY_ARGS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA: CPU processes
        assert train_net.run_cli(argv + [f"train.output_dir={tmp_path}"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback to the CPU")
def test_cpu_fallback_switches_mixed_precision_off() -> None:
    args = train_net.build_argument_parser().parse_args(["--config-file", str(REPO / DEMO)])
    with pytest.warns(UserWarning, match="CUDA is not available: running on the CPU"):
        cfg = train_net.load_config(args)
    assert cfg.train.device == "cpu" and cfg.train.amp.enabled is False
    assert get_config("demo/mask_rcnn_mvitv2_shapes.py").train.amp.enabled is True


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path: Path) -> None:
    (tmp_path / ".model_0000003.pth.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".last_checkpoint.x8.tmp").write_bytes(b"model_00")
    (tmp_path / "notes.tmp").write_text("not written by an interrupted write")
    with train_net.training_output_dir(str(tmp_path)):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".train.lock", "notes.tmp"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0"),
        ("optimizer.lr=-0.001", "optimizer.lr must be a positive number, got -0.001"),
        ("train.max_iter=0", "train.max_iter must be an integer >= 1, got 0"),
        ("train.checkpointer.period=0", "train.checkpointer.period must be an integer >= 1"),
        ("train.log_period=-1", "train.log_period must be an integer >= 1, got -1"),
    ],
)
def test_counts_and_learning_rate_must_be_positive(override: str, message: str) -> None:
    args = train_net.build_argument_parser().parse_args(
        ["--config-file", str(REPO / DEMO), override]
    )
    with pytest.raises(UsageError, match=message):
        train_net.load_config(args)


def test_datasets_node_of_the_config_is_registered_and_checked(
    shapes_datasets_root: str, tmp_path: Path
) -> None:
    json_file, image_root = shapes_dataset_files(
        os.path.join(shapes_datasets_root, "mvit_shapes"), "val"
    )
    with open(json_file) as f:
        data = json.load(f)
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "stray.json").write_text(json.dumps(data))
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    cfg.datasets = {
        "reliability_stray_ds": {
            "json_file": str(tmp_path / "stray.json"),
            "image_root": image_root,
        }
    }
    cfg.dataloader.train.dataset.names = "reliability_stray_ds"
    args = argparse.Namespace(register_coco=[], eval_only=False)
    with pytest.raises(UsageError, match="category_id that is not among its categories"):
        train_net._register_datasets(cfg, args, check_content=True)


def test_cpu_processes_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two training processes on a machine of 8 cores and no GPU use 4 threads each."""
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    cfg.train.device = "cpu"
    threads: List[int] = []
    monkeypatch.setattr(train_net, "setup", lambda args: cfg)
    monkeypatch.setattr(comm, "get_local_size", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(
        train_net, "do_train", lambda *args, **kwargs: threads.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    try:
        train_net.main(argparse.Namespace(eval_only=False, resume=False))
    finally:
        torch.set_num_threads(before)
    assert threads == [4]
