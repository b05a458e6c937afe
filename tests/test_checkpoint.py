"""Official-format checkpoints, bad files, position-table resizing and the checkpointer itself.

The files are written by the tests with the official key names, containers and shapes (values are
random): the real checkpoints cannot be downloaded here.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
from pathlib import Path
from typing import Dict, Sequence

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import save_file

from helpers import Detector
from mvit_det import MViT, mvit_preset
from mvit_det.checkpoint import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    MissingBackboneKeysError,
    MViTCheckpointer,
    NotACheckpointError,
    TruncatedCheckpointError,
    read_checkpoint,
)
from mvit_det.tools import convert_checkpoint as convert_tool
from mvit_det.utils.file_io import atomic_write

CLASSIFIER_KEYS = {"cls_token", "norm.weight", "norm.bias", "head.projection.weight"}
CLASSIFIER_KEYS |= {"head.projection.bias"}
TINY = dict(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3))


def official_state(
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    img_size: int = 224,
    abs_pos: bool = False,
    **_: object,
) -> Dict[str, torch.Tensor]:
    """
    Random weights named and shaped as in a facebookresearch/mvit MViTv2 ``model_state``
    (class token, ImageNet-1K head), derived from the architecture rules (docs/architecture.md)
    independently of mvit_det's MViT.
    """
    g = torch.Generator().manual_seed(depth * 1000 + embed_dim)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    sd = {
        "patch_embed.proj.weight": rand(embed_dim, 3, 7, 7),
        "patch_embed.proj.bias": rand(embed_dim),
    }
    sd["cls_token"] = rand(1, 1, embed_dim)
    if abs_pos:
        sd["pos_embed"] = rand(1, (img_size // 4) ** 2 + 1, embed_dim)
    dim, heads, stride_kv, size = embed_dim, num_heads, 4, img_size // 4
    for i in range(depth):
        first = i > 0 and i - 1 in last_block_indexes
        stride_q = 2 if first else 1
        if first:
            dim_out, heads, stride_kv = dim * 2, heads * 2, max(stride_kv // 2, 1)
        else:
            dim_out = dim
        head_dim = dim_out // heads
        table = 2 * max(size // stride_q, size // stride_kv) - 1
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + rand(dim), b + "norm1.bias": rand(dim)})
        sd.update(
            {b + "attn.qkv.weight": rand(3 * dim_out, dim), b + "attn.qkv.bias": rand(3 * dim_out)}
        )
        sd.update(
            {b + "attn.proj.weight": rand(dim_out, dim_out), b + "attn.proj.bias": rand(dim_out)}
        )
        for t in "qkv":
            sd[f"{b}attn.pool_{t}.weight"] = rand(head_dim, 1, 3, 3)
            sd[f"{b}attn.norm_{t}.weight"] = 1 + rand(head_dim)
            sd[f"{b}attn.norm_{t}.bias"] = rand(head_dim)
        sd.update(
            {
                b + "attn.rel_pos_h": rand(table, head_dim),
                b + "attn.rel_pos_w": rand(table, head_dim),
            }
        )
        sd.update({b + "norm2.weight": 1 + rand(dim_out), b + "norm2.bias": rand(dim_out)})
        sd.update(
            {
                b + "mlp.fc1.weight": rand(4 * dim_out, dim_out),
                b + "mlp.fc1.bias": rand(4 * dim_out),
            }
        )
        sd.update(
            {b + "mlp.fc2.weight": rand(dim_out, 4 * dim_out), b + "mlp.fc2.bias": rand(dim_out)}
        )
        if first:
            sd.update({b + "proj.weight": rand(dim_out, dim), b + "proj.bias": rand(dim_out)})
            size //= 2
        dim = dim_out
    sd.update({"norm.weight": 1 + rand(dim), "norm.bias": rand(dim)})
    sd.update({"head.projection.weight": rand(1000, dim), "head.projection.bias": rand(1000)})
    return sd


def write_pyth(path: Path, state: Dict[str, torch.Tensor]) -> Path:
    """An official training-loop checkpoint; legacy (non-zip) torch container, as older torch."""
    data = {
        "epoch": 300,
        "model_state": state,
        "optimizer_state": {},
        "cfg": "MVIT:\n  DEPTH: 10\n",
    }
    torch.save(data, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def t_pyth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyth(
        tmp_path_factory.mktemp("official") / "MViTv2_T_in1k.pyth",
        official_state(**mvit_preset("T")),
    )


def test_official_round_trip(t_pyth: Path) -> None:
    """Official .pyth -> zero missing backbone keys, and outputs equal to a directly built model."""
    torch.manual_seed(0)
    detector = Detector(**mvit_preset("T")).eval()
    checkpointer = MViTCheckpointer(detector)
    checkpointer.load(str(t_pyth))
    report = checkpointer.last_report
    assert report.missing == []
    assert {k for k, _ in report.dropped} == CLASSIFIER_KEYS
    assert report.new == [
        f"backbone.bottom_up.scale{n}_norm.{p}" for n in range(2, 6) for p in ("weight", "bias")
    ]
    assert report.resized == []
    assert report.layout.startswith("official")

    official = torch.load(t_pyth, weights_only=True)["model_state"]
    torch.manual_seed(1)
    direct = MViT(**mvit_preset("T")).eval()
    result = direct.load_state_dict(
        {k: v for k, v in official.items() if k not in CLASSIFIER_KEYS}, strict=False
    )
    assert sorted(result.missing_keys) == sorted(k.split("bottom_up.")[1] for k in report.new)
    assert result.unexpected_keys == []
    loaded = detector.backbone.bottom_up
    direct.load_state_dict(
        {k: v for k, v in loaded.state_dict().items() if k.startswith("scale")}, strict=False
    )

    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        out_loaded, out_direct = loaded(x), direct(x)
    for name in out_direct:
        assert torch.equal(out_loaded[name], out_direct[name]), name


def test_convert_tool_official_to_pkl(
    t_pyth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The tool writes a model-zoo .pkl that plain Detectron2 loads with every backbone key."""
    out = tmp_path / "mvitv2_t_in1k.pkl"
    assert convert_tool.main([str(t_pyth), str(out), "--model", "T"]) == 0
    printed = capsys.readouterr().out
    assert "missing : 0" in printed and "dropped : 5" in printed and "new     : 8" in printed
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert (
        data["__author__"] == "mvit_det"
        and "backbone.bottom_up.blocks.9.attn.rel_pos_h" in data["model"]
    )
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left

    detector = Detector(**mvit_preset("T"))
    plain = DetectionCheckpointer(detector)
    incompatible = plain._load_model(plain._load_file(str(out)))
    backbone_missing = [
        k for k in incompatible.missing_keys if "bottom_up" in k and "scale" not in k
    ]
    assert backbone_missing == [] and incompatible.incorrect_shapes == []
    official = torch.load(t_pyth, weights_only=True)["model_state"]
    torch.testing.assert_close(
        detector.backbone.bottom_up.blocks[3].attn.qkv.weight,
        official["blocks.3.attn.qkv.weight"],
        rtol=0,
        atol=0,
    )


def test_position_tables_are_resized(tmp_path: Path) -> None:
    """Pretraining-size tables are interpolated to the model's; the class-token slot is kept."""
    state = official_state(**TINY, abs_pos=True)
    path = write_pyth(tmp_path / "tiny.pyth", state)
    kwargs = dict(TINY, img_size=256, use_abs_pos=True, pretrain_img_size=192)
    detector = Detector(**kwargs)
    checkpointer = MViTCheckpointer(detector)
    checkpointer.load(str(path))
    mvit = detector.backbone.bottom_up
    resized = {
        k.split("bottom_up.")[1]: (old, new) for k, old, new in checkpointer.last_report.resized
    }
    assert resized["pos_embed"] == ((1, 56 * 56 + 1, 16), (1, 48 * 48 + 1, 16))
    assert resized["blocks.0.attn.rel_pos_h"] == ((111, 16), (127, 16))
    assert len(resized) == 1 + 2 * TINY["depth"]
    text = checkpointer.last_report.format()
    assert "bottom_up.blocks.0.attn.{rel_pos_h,rel_pos_w}: [111, 16] -> [127, 16]" in text
    assert "bottom_up.scale{2-5}_norm.{weight,bias}" in text

    expected_h = F.interpolate(state["blocks.0.attn.rel_pos_h"].T[None], size=127, mode="linear")[
        0
    ].T
    torch.testing.assert_close(mvit.blocks[0].attn.rel_pos_h.data, expected_h)
    grid = state["pos_embed"][:, 1:].reshape(1, 56, 56, 16).permute(0, 3, 1, 2)
    expected_grid = F.interpolate(grid, size=(48, 48), mode="bicubic", align_corners=False)
    torch.testing.assert_close(mvit.pos_embed.data[:, 1:], expected_grid.flatten(2).transpose(1, 2))
    assert torch.equal(mvit.pos_embed.data[:, :1], state["pos_embed"][:, :1])

    no_slot = Detector(**kwargs, pretrain_use_cls_token=False)
    MViTCheckpointer(no_slot).load(str(path))
    torch.testing.assert_close(
        no_slot.backbone.bottom_up.pos_embed.data, mvit.pos_embed.data[:, 1:]
    )


def test_wrong_architecture_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """MViTv2-B weights for an MViTv2-T model: an error naming both sizes, no output file."""
    path = write_pyth(tmp_path / "MViTv2_B_in1k.pyth", official_state(**mvit_preset("B")))
    with pytest.raises(ArchitectureMismatchError) as info:
        MViTCheckpointer(Detector(**mvit_preset("T"))).load(str(path))
    message = str(info.value)
    assert "blocks.1.attn.qkv.weight: checkpoint [288, 96] vs model [576, 96]" in message
    assert "the checkpoint holds MViTv2-B (embed_dim=96, depth=24" in message
    assert "the model is MViTv2-T (embed_dim=96, depth=10" in message

    out = tmp_path / "out.pkl"
    assert convert_tool.main([str(path), str(out), "--model", "T"]) == 2
    assert "MViTv2-B" in capsys.readouterr().err and not out.exists()


def test_v1_weights_for_v2_model_are_refused(tmp_path: Path) -> None:
    """An absolute position embedding has no place in a model without one: refused, not dropped."""
    path = write_pyth(tmp_path / "v1.pyth", official_state(**TINY, abs_pos=True))
    with pytest.raises(
        ArchitectureMismatchError, match=r"pos_embed \[1, 3137, 16\]: no such tensor"
    ):
        MViTCheckpointer(Detector(**TINY)).load(str(path))


def test_missing_backbone_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Missing backbone tensors are fatal unless explicitly allowed; the tool exits 1."""
    state = official_state(**TINY)
    del state["blocks.2.mlp.fc1.weight"], state["blocks.2.mlp.fc1.bias"]
    path = write_pyth(tmp_path / "partial.pyth", state)
    with pytest.raises(
        MissingBackboneKeysError, match=r"backbone.bottom_up.blocks.2.mlp.fc1.weight"
    ):
        MViTCheckpointer(Detector(**TINY)).load(str(path))
    checkpointer = MViTCheckpointer(Detector(**TINY), allow_missing_backbone_keys=True)
    checkpointer.load(str(path))
    assert checkpointer.last_report.missing == [
        "backbone.bottom_up.blocks.2.mlp.fc1.weight",
        "backbone.bottom_up.blocks.2.mlp.fc1.bias",
    ]

    out = tmp_path / "out.pkl"
    tool = convert_tool
    tiny_config = tmp_path / "tiny_config.py"
    tiny_config.write_text(
        "from detectron2.config import LazyCall as L\n"
        "from mvit_det import MViT, build_mvit_fpn\n"
        f"model = L(build_mvit_fpn)(bottom_up=L(MViT)(**{TINY!r}))\n"
    )
    assert tool.main([str(path), str(out), "--model", str(tiny_config)]) == 1
    captured = capsys.readouterr()
    assert "missing : 2" in captured.out and "was not written" in captured.err and not out.exists()


@pytest.mark.parametrize("container", ["zip", "legacy", "pkl", "safetensors"])
def test_truncated_files(tmp_path: Path, container: str) -> None:
    state = {k: v for k, v in official_state(**TINY).items()}
    path = tmp_path / f"weights.{container}"
    if container == "pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}, f)
    elif container == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model_state": state}, path, _use_new_zipfile_serialization=container == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TruncatedCheckpointError, match="truncated"):
        read_checkpoint(str(path))
    path.write_bytes(b"")
    with pytest.raises(TruncatedCheckpointError, match="empty"):
        read_checkpoint(str(path))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            "Git LFS pointer",
        ),
        (json.dumps({"model": "T"}).encode(), 'starts with b\'{"model": "T"}'),
        (pickle.dumps([1, 2, 3]), "holds a list"),
        (pickle.dumps({"epoch": 3, "lr": 0.1}), "entries are not tensors"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model_final.pkl"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError, match="not a checkpoint") as info:
        read_checkpoint(str(path))
    assert expected in str(info.value)


def test_other_architecture_weights_are_refused(tmp_path: Path) -> None:
    """A valid checkpoint of another backbone (ResNet-like names): no MViT weights in it."""
    path = tmp_path / "R-50.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(ArchitectureMismatchError, match="holds no MViT backbone weights"):
        MViTCheckpointer(Detector(**TINY)).load(str(path))


def test_unreachable_url_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/MViTv2_T_in1k.pyth"
    closed.close()  # nothing listens there any more
    with pytest.raises(
        CheckpointNotFoundError, match="could not fetch .*Connection refused.*local path"
    ):
        MViTCheckpointer(Detector(**TINY)).load(url)
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        read_checkpoint("/nonexistent/model.pth")


def test_atomic_write_leaves_old_file_on_crash(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"old")

    def crash(f: object) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), crash)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pkl"]
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.pkl"]


def test_atomic_write_names_the_path_and_errno(tmp_path: Path) -> None:
    """A failed write (here as torch.save reports a full disk: a RuntimeError whose context is the
    OSError) raises an OSError with the errno and the path, and leaves the old file."""
    path = tmp_path / "model_0000009.pth"
    path.write_bytes(b"old")

    def disk_full(f: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] unexpected pos")

    with pytest.raises(OSError) as info:
        atomic_write(str(path), disk_full)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"[Errno 28] cannot write {str(path)!r}: No space left on device"
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == [path.name]


def test_save_and_resume(tmp_path: Path) -> None:
    """Training checkpoints save atomically and resume with their optimizer and iteration."""
    torch.manual_seed(0)
    model = Detector(**TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.backbone(torch.randn(1, 3, 64, 64))["p2"].sum().backward()
    optimizer.step()
    MViTCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000000", iteration=0)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]

    torch.manual_seed(1)
    restored = Detector(**TINY)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    loader = MViTCheckpointer(restored, str(tmp_path), optimizer=restored_opt)
    assert loader.resume_or_load("", resume=True) == {"iteration": 0}
    assert loader.last_report.missing == [] and loader.last_report.new == []
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    assert restored_opt.state_dict()["state"][0]["step"] == 1


def test_numpy_values_in_torch_file(tmp_path: Path) -> None:
    """numpy arrays of plain dtypes in torch.save files are plain data: read without trust."""
    state = official_state(**TINY)
    path = tmp_path / "converted.pth"
    torch.save({"model": {k: v.numpy() for k, v in state.items()}}, path)
    ckpt = read_checkpoint(str(path))
    assert ckpt.kind == "detectron2" and torch.equal(ckpt.state["cls_token"], state["cls_token"])


def test_models_without_mvit_load_as_detectron2_does(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    path = tmp_path / "linear.pth"
    torch.save({"model": {"0.weight": torch.ones(2, 4), "0.bias": torch.zeros(2)}}, path)
    MViTCheckpointer(model).load(str(path))
    assert torch.equal(model[0].weight.data, torch.ones(2, 4))
