"""Untrusted files never run code; downloads time out, verify and heal; damaged files, odd
containers and bad outputs are named before any work."""

from __future__ import annotations

import builtins
import hashlib
import http.server
import io
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import SimpleTrainer
from iopath.common.file_io import HTTPURLHandler
from omegaconf import OmegaConf

from mvit_det.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    DamagedCheckpointError,
    MViTCheckpointer,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    load_object,
    read_checkpoint,
)
from mvit_det import MViT, build_mvit_fpn
from mvit_det.checkpoint import download as checkpoint_download
from mvit_det.engine.train_net import run_cli
from mvit_det.tools import convert_checkpoint as convert_tool

from helpers import REPO
from test_checkpoint import TINY, Detector, official_state
from test_train_net import DEMO
from test_train_net import TINY as TINY_ARGS


class _WritesMarker:
    """Unpickling this object calls open(path, "w"): it creates a file, as an attack would."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def write_malicious(path: Path, marker: Path, inside: bool = True) -> Path:
    """A checkpoint of weights that also carries code, in the container of its suffix: among
    the weights (``inside``) or beside them, as entry "x"."""
    code = _WritesMarker(marker)
    if path.suffix == ".pkl":
        weights = {"w": np.ones(2, np.float32)}
        data = {"model": weights, "__author__": "x"}
    else:
        weights = {"w": torch.ones(2)}
        data = {"model": weights}
    if inside:
        weights["x"] = code
    else:
        data["x"] = code
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(data))
    else:
        torch.save(data, path, _use_new_zipfile_serialization=path.suffix == ".pth")
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".pyth"])
def test_malicious_files_do_not_run_without_opt_in(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture
) -> None:
    """Code among the weights: every reader refuses the file."""
    marker = tmp_path / "code_ran"
    path = str(write_malicious(tmp_path / f"model{suffix}", marker))
    expected = r"pickles Python objects \(io.open\).*--trust-checkpoint.*trust=True"
    with pytest.raises(UnsafeCheckpointError, match=expected):
        read_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=expected):
        load_object(path)
    with pytest.raises(UnsafeCheckpointError):
        MViTCheckpointer(Detector(**TINY)).load(path)
    with pytest.raises(UnsafeCheckpointError):  # Detectron2's loading path, for other models
        MViTCheckpointer(nn.Linear(2, 2)).load(path)
    out = tmp_path / "out.pkl"
    assert convert_tool.main([path, str(out), "--model", "T"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not out.exists()
    assert not marker.exists()

    load_object(path, trust=True)  # the explicit opt-in unpickles in full
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".pyth"])
def test_objects_beside_the_weights_are_left_out(tmp_path: Path, suffix: str) -> None:
    """Code beside the weights: reading the weights leaves it out without running it; reading
    the whole file, or resuming from it, is refused."""
    marker = tmp_path / "code_ran"
    path = str(write_malicious(tmp_path / f"model{suffix}", marker, inside=False))
    ckpt = read_checkpoint(path)
    assert ckpt.skipped == {"x": ["io.open"]} and "x" not in ckpt.extra
    assert torch.equal(ckpt.state["w"], torch.ones(2))
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(2))
    MViTCheckpointer(model).load(path)  # weights only: Detectron2's loading path
    assert torch.equal(model.w.detach(), torch.ones(2))
    with pytest.raises(UnsafeCheckpointError, match=r"io.open"):
        load_object(path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    resuming = MViTCheckpointer(model, str(tmp_path), optimizer=optimizer)
    with pytest.raises(UnsafeCheckpointError, match="cannot resume .*'x'.*io.open"):
        resuming.load(path)  # all checkpointables: as resume_or_load does
    assert not marker.exists()


def test_training_tool_refuses_malicious_init_checkpoint(
    shapes_datasets_root: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "code_ran"
    path = write_malicious(tmp_path / "model_final.pkl", marker)
    argv = ["--config-file", str(REPO / DEMO), "--eval-only"] + TINY_ARGS
    argv += [f"train.output_dir={tmp_path}", f"train.init_checkpoint={path}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(argv) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not marker.exists()


def test_plain_data_loads_without_opt_in(tmp_path: Path) -> None:
    """Python-2-era pickles with OrderedDicts, numpy arrays and scalars; numpy in torch files.
    Arrays of Python objects are not weights: refused, with the dtype named."""
    weights = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.zeros(2, np.int64))
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "step": np.float64(3.0)}, protocol=2))
    ckpt = read_checkpoint(str(path))
    assert ckpt.extra["step"] == 3.0 and torch.equal(ckpt.state["w"], torch.arange(6.0).view(2, 3))

    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}}))
    with pytest.raises(NotACheckpointError, match="dtype '\\|O'"):
        read_checkpoint(str(objects))
    torch.save({"model": {"w": np.array([1, "a"], dtype=object)}}, tmp_path / "objects.pth")
    with pytest.raises(NotACheckpointError, match="dtype '\\|O'"):
        read_checkpoint(str(tmp_path / "objects.pth"))


def test_damaged_zip_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A flipped byte in a torch.save file fails the zip CRC check instead of loading."""
    state = official_state(**TINY)
    path = tmp_path / "weights.pth"
    torch.save({"model_state": state}, path)
    data = bytearray(path.read_bytes())
    offset = data.find(state["patch_embed.proj.weight"].numpy().tobytes()[:16])
    data[offset + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match="fails the zip CRC check"):
        read_checkpoint(str(path))
    assert convert_tool.main([str(path), str(tmp_path / "out.pkl"), "--model", "T"]) == 2
    assert "CRC" in capsys.readouterr().err


def test_state_dict_container_directory_and_mismatch_messages(tmp_path: Path) -> None:
    state = official_state(**TINY)
    wrapped = tmp_path / "trained.pth"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    ckpt = read_checkpoint(str(wrapped))
    assert ckpt.kind == "wrapped" and ckpt.extra == {"epoch": 3}
    checkpointer = MViTCheckpointer(Detector(**TINY))
    checkpointer.load(str(wrapped))
    assert checkpointer.last_report.missing == []

    with pytest.raises(NotACheckpointError, match="is a directory.*trained.pth"):
        read_checkpoint(str(tmp_path))
    (tmp_path / "last_checkpoint").write_text("trained.pth")
    with pytest.raises(NotACheckpointError, match="newest checkpoint is .*trained.pth"):
        read_checkpoint(str(tmp_path))

    # One tensor too many, same size on both sides: the message does not blame the size.
    extra = tmp_path / "extra.pth"
    torch.save({"model_state": {**state, "blocks.0.attn.scale": torch.ones(1)}}, extra)
    with pytest.raises(ArchitectureMismatchError) as info:
        MViTCheckpointer(Detector(**TINY)).load(str(extra))
    assert "both are an MViT (embed_dim=16" in str(info.value)
    assert "checkpoint's size" not in str(info.value)


def test_converter_checks_output_first_and_warns_of_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing_input = str(tmp_path / "nowhere.pth")
    for output, message in (
        (tmp_path / "no_dir" / "out.pkl", "does not exist: create"),
        (tmp_path, "is a directory"),
        (tmp_path / "out.txt", "must end with .pkl or .pth"),
    ):
        assert convert_tool.main([missing_input, str(output), "--model", "T"]) == 2
        assert message in capsys.readouterr().err

    state = official_state(**TINY)
    state["blocks.1.mlp.fc1.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"model_state": state}, path)
    config = tmp_path / "tiny.py"
    config.write_text(
        "from detectron2.config import LazyCall as L\n"
        "from mvit_det import MViT, build_mvit_fpn\n"
        f"model = L(build_mvit_fpn)(bottom_up=L(MViT)(**{TINY!r}))\n"
    )
    out = tmp_path / "out.pth"
    assert convert_tool.main([str(path), str(out), "--model", str(config)]) == 0
    assert "warning: 1 tensors hold NaN or Inf values: bottom_up.blocks.1.mlp.fc1.bias" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------------------------
# numpy arrays in pickles: every protocol, and what a crafted pickle may ask for.

# Arrays of every kind weights come in, written by numpy itself (the reference).
ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f64": np.linspace(-1.0, 1.0, 5),
    "f16": np.array([0.5, -2.0, 65504.0], np.float16),
    "i64": np.array([-(2**40), 0, 7], np.int64),
    "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
    "u8": np.arange(250, 256, dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "c64": np.array([1 + 2j, -0.5j], np.complex64),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big_endian": np.arange(4, dtype=">f4"),
    "strided": np.arange(10.0)[::3],
    "empty": np.zeros((0, 3), np.float32),
    "scalar_array": np.array(2.5, np.float32),
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_arrays_of_every_pickle_protocol_load(tmp_path: Path, protocol: int) -> None:
    """Arrays, dtypes and scalars as numpy pickles them in protocols 0 to 5 (protocol 5 through
    numpy.core.numeric._frombuffer) load without trust, equal to what was written."""
    path = tmp_path / f"p{protocol}.pkl"
    extra = {"scalar": np.float64(0.25), "names": np.array(["ab", "c"]), "dtype": np.dtype("<i2")}
    data = {"model": OrderedDict(ARRAYS), "__author__": "test", **extra}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    loaded = load_object(str(path))
    for name, array in ARRAYS.items():
        assert loaded["model"][name].dtype == array.dtype, name
        assert loaded["model"][name].shape == array.shape, name
        assert np.array_equal(loaded["model"][name], array), name
    assert loaded["scalar"] == 0.25 and type(loaded["scalar"]) is np.float64
    assert list(loaded["names"]) == ["ab", "c"] and loaded["dtype"] == np.dtype("<i2")
    ckpt = read_checkpoint(str(path))
    assert ckpt.kind == "detectron2" and list(ckpt.state) == list(ARRAYS)
    for name, array in ARRAYS.items():
        expected = torch.tensor(array.tolist(), dtype=ckpt.state[name].dtype)
        assert torch.equal(ckpt.state[name], expected.reshape(array.shape)), name


def test_converter_pkl_loads_without_trust_and_in_detectron2(tmp_path: Path) -> None:
    """The converter's .pkl (protocol 4) is read by read_checkpoint without trust and by plain
    Detectron2's checkpointer, with the same weights."""
    official = official_state(**TINY)
    source = tmp_path / "official.pth"
    torch.save({"model_state": official}, source)
    config = tmp_path / "tiny.py"
    config.write_text(
        "from detectron2.config import LazyCall as L\n"
        "from mvit_det import MViT, build_mvit_fpn\n"
        f"model = L(build_mvit_fpn)(bottom_up=L(MViT)(**{TINY!r}))\n"
    )
    out = tmp_path / "converted.pkl"
    assert convert_tool.main([str(source), str(out), "--model", str(config)]) == 0
    assert out.read_bytes()[:2] == b"\x80\x04"  # protocol 4
    ckpt = read_checkpoint(str(out))
    expected = official["blocks.1.attn.qkv.weight"]
    assert ckpt.kind == "detectron2"
    assert torch.equal(ckpt.state["bottom_up.blocks.1.attn.qkv.weight"], expected)
    fpn = build_mvit_fpn(MViT(**TINY))  # the config's model: its names are the file's
    DetectionCheckpointer(fpn).load(str(out))
    assert torch.equal(fpn.bottom_up.blocks[1].attn.qkv.weight, expected)


# Pickle opcodes, to write by hand what numpy never writes.
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(value: int) -> bytes:
    return b"\x8a" + bytes([8]) + value.to_bytes(8, "little", signed=True)  # LONG1


def _str(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()  # BINUNICODE


def _bytes(data: bytes) -> bytes:
    return b"B" + len(data).to_bytes(4, "little") + data  # BINBYTES


def _dtype(code: str, flags: int = 0, fields: bytes = b"N") -> bytes:
    """numpy.dtype(code, False, True), then BUILD with the state (3, '<', None, fields, ...)."""
    build = b"(" + _int(3) + _str("<") + b"N" + fields + b"N" + _int(-1) + _int(-1) + _int(flags)
    return _global("numpy", "dtype") + b"(" + _str(code) + b"\x89\x88tR" + build + b"tb"


def _array(shape: Tuple[int, ...], dtype: bytes, data: bytes, reconstruct_shape=(0,)) -> bytes:
    """_reconstruct(ndarray, reconstruct_shape, b'b'), then BUILD with (1, shape, dtype, False,
    data)."""
    ints = lambda values: b"(" + b"".join(_int(v) for v in values) + b"t"  # noqa: E731
    head = _global("numpy.core.multiarray", "_reconstruct") + b"(" + _global("numpy", "ndarray")
    head += ints(reconstruct_shape) + _bytes(b"b") + b"tR"
    return head + b"(" + _int(1) + ints(shape) + dtype + b"\x89" + data + b"tb"


def _weights_pickle(value: bytes) -> bytes:
    """{"model": {"w": value}} in protocol 2."""
    return b"\x80\x02}" + _str("model") + b"}" + _str("w") + value + b"ss."


def test_crafted_numpy_arrays_are_refused_with_clear_errors(tmp_path: Path) -> None:
    """Arrays of Python objects, strings or long doubles, tampered dtypes, and arrays numpy never
    writes: a CheckpointError naming the problem each time, never a raw TypeError."""
    path = tmp_path / "crafted.pkl"
    cases = [
        # an object array built from its parts: the objects are plain (ints), the dtype is 'O'
        (_array((2,), _dtype("O"), b"(" + _int(1) + _int(2) + b"l"), NotACheckpointError, "|O"),
        (_array((1,), _dtype("U2"), _bytes(b"a\0\0\0b\0\0\0")), NotACheckpointError, "<U2"),
        (_array((1,), _dtype("f16"), _bytes(bytes(16))), NotACheckpointError, "<f16"),
        (_array((1,), _dtype("M8"), _bytes(bytes(8))), NotACheckpointError, "M8"),
        (_array((1,), _dtype("V8"), _bytes(bytes(8))), NotACheckpointError, "|V8"),
        # a float dtype whose state claims fields, or object flags (ignored: a plain float)
        (_array((1,), _dtype("f8", fields=b"}"), _bytes(bytes(8))), DamagedCheckpointError, ""),
        # numpy.ndarray called directly, and _reconstruct asked for an array without data
        (_global("numpy", "ndarray") + b"(" + _int(3) + b"tR", DamagedCheckpointError, "ndarray"),
        (_array((2,), _dtype("f4"), _bytes(bytes(8)), (2,)), DamagedCheckpointError, "without"),
    ]
    for value, error, text in cases:
        path.write_bytes(_weights_pickle(value))
        with pytest.raises(error) as info:
            read_checkpoint(str(path))
        assert text in str(info.value), str(info.value)
    path.write_bytes(_weights_pickle(_array((2,), _dtype("f8", flags=0x3F), _bytes(bytes(16)))))
    assert torch.equal(read_checkpoint(str(path)).state["w"], torch.zeros(2, dtype=torch.float64))
    # an array "of class io.open": the refused class makes the file unsafe, not damaged
    subclass = _global("numpy.core.multiarray", "_reconstruct") + b"(" + _global("io", "open")
    path.write_bytes(_weights_pickle(subclass + b"(" + _int(0) + b"t" + _bytes(b"b") + b"tR"))
    with pytest.raises(UnsafeCheckpointError, match=r"\(io.open\)"):
        read_checkpoint(str(path))


def test_arrays_larger_than_the_file_are_refused_before_allocating(tmp_path: Path) -> None:
    """Pickles of a hundred bytes asking for 16 GiB (an array's shape, _frombuffer, bytearray, a
    legacy torch storage) or a huge memo: refused (or read) without allocating it."""
    huge = 4 << 30  # float32 elements: 16 GiB
    frombuffer = _global("numpy.core.numeric", "_frombuffer") + b"(" + _bytes(bytes(8))
    frombuffer += _dtype("f4") + b"(" + _int(huge) + b"t" + _str("C") + b"tR"
    legacy = bytearray()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        legacy += pickle.dumps(obj, protocol=2)
    storage = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu")
    legacy += b"\x80\x02}" + _str("w") + storage + _int(huge) + b"Nt" + b"Qs."  # BINPERSID
    cases = {
        # a memo index of 2**25: the C unpickler would make a 512 MiB memo for it
        "memo.pkl": b"\x80\x02}r" + (1 << 25).to_bytes(4, "little") + b".",
        "shape.pkl": _weights_pickle(_array((huge,), _dtype("f4"), _bytes(bytes(8)))),
        "frombuffer.pkl": _weights_pickle(frombuffer),
        "bytearray.pkl": _weights_pickle(
            _global("builtins", "bytearray") + b"(" + _int(huge) + b"tR"
        ),
        "legacy.pth": bytes(legacy) + pickle.dumps(["0"], protocol=2),
    }
    tracemalloc.start()
    try:
        for name, data in cases.items():
            assert len(data) < 400
            (tmp_path / name).write_bytes(data)
            with pytest.raises((DamagedCheckpointError, NotACheckpointError)) as info:
                read_checkpoint(str(tmp_path / name))
            expected = r"17179869184|16.0 GiB|bytearray|holds no weights"
            assert re.search(expected, str(info.value)), str(info.value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# ---------------------------------------------------------------------------------------------
# Detectron2's own training checkpoints: weights beside a trainer state of omegaconf objects.


def test_detectron2_training_checkpoint_weights_read_without_trust(tmp_path: Path) -> None:
    """A checkpoint written by Detectron2's DetectionCheckpointer for a SimpleTrainer whose
    AdamW got its betas from a LazyConfig (an omegaconf ListConfig, as lazyconfig_train_net.py
    gives): the weights load without trust, the trainer state is left out; resuming needs
    trust."""
    torch.manual_seed(0)
    model = Detector(**TINY)
    betas = OmegaConf.create({"betas": [0.9, 0.999]}).betas
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=betas)
    model.backbone(torch.randn(1, 3, 64, 64))["p2"].sum().backward()
    optimizer.step()
    trainer = SimpleTrainer(model, [], optimizer)
    trainer.iter = 9
    DetectionCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000009", iteration=9)
    path = str(tmp_path / "model_0000009.pth")
    with pytest.raises(pickle.UnpicklingError, match="ListConfig"):
        torch.load(path, weights_only=True)  # the file does pickle omegaconf objects

    ckpt = read_checkpoint(path)
    assert ckpt.kind == "detectron2" and ckpt.extra == {"iteration": 9}
    assert list(ckpt.skipped) == ["trainer"]
    assert "omegaconf.listconfig.ListConfig" in ckpt.skipped["trainer"]
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt.state[name], value), name
    fresh = Detector(**TINY)
    MViTCheckpointer(fresh).load(path)
    assert torch.equal(
        fresh.backbone.bottom_up.blocks[1].attn.qkv.weight,
        model.backbone.bottom_up.blocks[1].attn.qkv.weight,
    )

    resumed_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-4)
    resumed = SimpleTrainer(fresh, [], resumed_optimizer)
    with pytest.raises(UnsafeCheckpointError, match="cannot resume .*'trainer'.*ListConfig"):
        MViTCheckpointer(fresh, str(tmp_path), trainer=resumed).resume_or_load("", resume=True)
    trusted = MViTCheckpointer(fresh, str(tmp_path), trainer=resumed, trust=True)
    assert trusted.resume_or_load("", resume=True) == {"iteration": 9}
    assert resumed.iter == 9 and list(resumed_optimizer.param_groups[0]["betas"]) == [0.9, 0.999]


# ---------------------------------------------------------------------------------------------
# Downloads, from a server in a thread of the test.


@contextmanager
def _http_server(files: Dict[str, object]) -> Iterator[Tuple[str, Dict]]:
    """An HTTP server on 127.0.0.1 serving ``files``: path -> bytes, ("cut", bytes) for a body
    cut off after half its announced length, ("drip", bytes) for a body sent one byte every
    0.1 s, or ("junk", announced length or None, bytes to send) for zeros sent as fast as the
    client takes them. The state counts requests per path ("hits") and bytes sent ("sent")."""
    hits: Dict[str, int] = {}
    sent: Dict[str, int] = {}
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            kind = body[0] if isinstance(body, tuple) else "plain"
            data = body if kind == "plain" else body[1]
            self.send_response(200)
            if kind != "junk":
                self.send_header("Content-Length", str(len(data)))
            elif data is not None:
                self.send_header("Content-Length", str(data))
            self.end_headers()
            try:
                if kind == "plain":
                    self.wfile.write(data)
                elif kind == "cut":
                    self.wfile.write(data[: len(data) // 2])
                elif kind == "drip":
                    self.wfile.write(data[:16])
                    for i in range(16, len(data)):
                        if stop.wait(0.1):
                            return
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                else:
                    chunk = bytes(1 << 16)
                    while sent.get(self.path, 0) < body[2] and not stop.is_set():
                        self.wfile.write(chunk)
                        sent[self.path] = sent.get(self.path, 0) + len(chunk)
            except OSError:  # the client went away
                pass

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", {
            "files": files,
            "hits": hits,
            "sent": sent,
        }
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[str, Dict]]:
    """A server (see _http_server); the download cache is a fresh folder."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    with _http_server({}) as (base, state):
        yield base, state


def _host_folder(base: str) -> Path:
    """Where downloads from ``base`` (http://127.0.0.1:<port>) are cached."""
    return Path("mvit_det_downloads") / f"http_127.0.0.1_{base.rsplit(':', 1)[1]}"


def _files_in(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _weights_file(tmp_path: Path, seed: int = 0) -> bytes:
    path = tmp_path / "src.pth"
    state = official_state(**TINY)
    state["cls_token"] = state["cls_token"] + seed
    torch.save({"model_state": state}, path)
    return path.read_bytes()


def test_download_is_verified_cached_and_healed(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base, state = server
    data = _weights_file(tmp_path)
    state["files"]["/zoo/mvit/weights.pth"] = data
    digest = hashlib.sha256(data).hexdigest()
    url = f"{base}/zoo/mvit/weights.pth"

    ckpt = read_checkpoint(f"{url}#sha256={digest}")
    assert ckpt.kind == "official" and state["hits"]["/zoo/mvit/weights.pth"] == 1
    cached = tmp_path / "cache" / _host_folder(base) / "zoo" / "mvit" / "weights.pth"
    assert cached.read_bytes() == data
    read_checkpoint(url)
    assert state["hits"]["/zoo/mvit/weights.pth"] == 1  # from the cache

    with pytest.raises(ChecksumMismatchError, match=f"not the expected {'0' * 64}"):
        read_checkpoint(url, sha256="0" * 64)
    assert not cached.exists()  # a file that fails the check is not kept

    # A cached HTML error page (as an interrupted or failed download leaves) is fetched again.
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"<!DOCTYPE html><html>503 Service Unavailable</html>")
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(url).kind == "official"
    assert "is not a checkpoint: it is an HTML/XML page" in caplog.text and "again" in caplog.text
    assert cached.read_bytes() == data

    # detectron2:// URLs are fetched from Detectron2's host into Detectron2's own layout.
    monkeypatch.setattr(checkpoint_download, "_DETECTRON2_HOST", f"{base}/d2/")
    state["files"]["/d2/ImageNetPretrained/x.pth"] = data
    assert read_checkpoint("detectron2://ImageNetPretrained/x.pth").kind == "official"
    assert (tmp_path / "cache" / "d2" / "ImageNetPretrained" / "x.pth").exists()


def test_detectron2_urls_share_detectron2s_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """detectron2:// files are where Detectron2 (iopath) keeps https://dl.fbaipublicfiles.com/
    detectron2/...: a file cached by one is used by the other, without a download."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MSRA" / "tiny.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_weights_file(tmp_path))
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/tiny.pth"
    assert HTTPURLHandler()._get_local_path(url) == str(cached)  # iopath: no download needed
    d2_url = "detectron2://" + url.split("/detectron2/", 1)[1]
    assert checkpoint_download.resolve_local_path(d2_url) == str(cached)
    assert checkpoint_download.resolve_local_path(url) == str(cached)


def test_cache_paths_stay_in_the_cache_and_apart_per_host(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """URLs with .. segments never write outside the cache; another host cannot fill the entry
    of Detectron2's host; a refused download leaves nothing in the cache."""
    base, state = server
    honest, other = _weights_file(tmp_path, seed=0), _weights_file(tmp_path, seed=1)
    cache = tmp_path / "cache"
    for path in ("/../../../x/.ssh/authorized_keys", "/a/%2e%2e/%2E%2E/x/b.pth", "/a/./b.pth?x=1"):
        state["files"][path] = honest
        assert read_checkpoint(base + path).kind == "official"
    outside = [p for p in tmp_path.rglob("*") if cache not in p.parents and p != cache]
    assert sorted(p.name for p in outside) == ["src.pth"]
    assert len([p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]) == 3

    # The default init checkpoint's host serves the honest file; another host tries to fill the
    # same cache entry first.
    with _http_server({"/detectron2/ImageNetPretrained/x.pth": honest}) as (d2_base, d2_state):
        monkeypatch.setattr(checkpoint_download, "_DETECTRON2_HOST", f"{d2_base}/detectron2/")
        state["files"]["/detectron2/ImageNetPretrained/x.pth"] = other
        read_checkpoint(f"{base}/detectron2/ImageNetPretrained/x.pth")
        ckpt = read_checkpoint("detectron2://ImageNetPretrained/x.pth")
        assert d2_state["hits"] == {"/detectron2/ImageNetPretrained/x.pth": 1}
        expected = official_state(**TINY)["cls_token"]
        assert torch.equal(ckpt.state["cls_token"], expected)

    # Refused downloads: not a checkpoint, wrong digest, too large, cut off.
    for entry in cache.iterdir():
        shutil.rmtree(entry)
    state["files"]["/../../page.pth"] = b"<html><body>Please sign in</body></html>"
    state["files"]["/up/../w.pth"] = honest
    state["files"]["/cut/w.pth"] = ("cut", honest)
    with pytest.raises(NotACheckpointError):
        read_checkpoint(f"{base}/../../page.pth")
    with pytest.raises(ChecksumMismatchError):
        read_checkpoint(f"{base}/up/../w.pth", sha256="1" * 64)
    with pytest.raises(CheckpointError, match="cut off|transfer failed"):
        read_checkpoint(f"{base}/cut/w.pth")
    monkeypatch.setenv("MVIT_DET_DOWNLOAD_MAX_BYTES", "1000")
    with pytest.raises(CheckpointNotFoundError, match="download limit"):
        read_checkpoint(f"{base}/up/../w.pth")
    assert _files_in(cache) == [] and list(cache.iterdir()) == []


def test_bad_downloads_are_named_and_not_cached(server, tmp_path: Path) -> None:
    base, state = server
    state["files"]["/page.pth"] = b"<html><body>Please sign in</body></html>"
    state["files"]["/cut.pth"] = ("cut", _weights_file(tmp_path))
    with pytest.raises(NotACheckpointError, match="HTML/XML page"):
        read_checkpoint(f"{base}/page.pth")
    with pytest.raises(CheckpointError, match="cut off after .* of .* bytes|transfer failed"):
        read_checkpoint(f"{base}/cut.pth")
    with pytest.raises(CheckpointNotFoundError, match="answered 404"):
        read_checkpoint(f"{base}/missing.pth")
    assert _files_in(tmp_path / "cache") == []


def test_silent_server_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection and never answers."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    start = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match="did not answer within 0.5 s"):
        read_checkpoint(f"http://127.0.0.1:{listener.getsockname()[1]}/m.pth", timeout=0.5)
    assert time.monotonic() - start < 10 and accepted
    listener.close()


def test_slow_drip_server_fails_at_the_deadline(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that sends a byte every 0.1 s (each read within the socket timeout) is given up
    at the overall deadline, leaving nothing in the cache."""
    base, state = server
    state["files"]["/slow.pth"] = ("drip", _weights_file(tmp_path))
    monkeypatch.setenv("MVIT_DET_DOWNLOAD_DEADLINE_S", "1.5")
    start = time.monotonic()
    error = _error_within(10, lambda: read_checkpoint(f"{base}/slow.pth", timeout=5))
    assert isinstance(error, CheckpointNotFoundError) and "within its deadline of 1.5 s" in str(
        error
    )
    assert 1.4 < time.monotonic() - start < 4
    assert _files_in(tmp_path / "cache") == []
    url = f"{base}/slow.pth"
    error = _error_within(10, lambda: checkpoint_download.resolve_local_path(url, deadline=0.5))
    assert isinstance(error, CheckpointNotFoundError) and "deadline of 0.5 s" in str(error)


def _error_within(seconds: float, function: Callable[[], object]) -> BaseException:
    """The exception ``function`` raises, in a thread that must end within ``seconds``."""
    errors: list = []

    def run() -> None:
        try:
            function()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert errors, "no error"
    return errors[0]


def test_downloads_over_the_size_limit_are_refused_early(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 MiB of junk, announced or not, with a limit of 1 MiB: refused when announced, or as
    soon as the limit is passed; nothing is cached."""
    base, state = server
    total = 300 << 20
    state["files"]["/announced.pth"] = ("junk", total, total)
    state["files"]["/unannounced.pth"] = ("junk", None, total)
    monkeypatch.setenv("MVIT_DET_DOWNLOAD_MAX_BYTES", str(1 << 20))
    with pytest.raises(CheckpointNotFoundError, match="announces 314572800 bytes.*1048576 bytes"):
        read_checkpoint(f"{base}/announced.pth")
    with pytest.raises(CheckpointNotFoundError, match="more than 1048576 bytes.*_MAX_BYTES"):
        read_checkpoint(f"{base}/unannounced.pth")
    time.sleep(0.5)  # let the server notice the closed connections
    assert state["sent"]["/unannounced.pth"] < 64 << 20
    assert state["sent"].get("/announced.pth", 0) < 64 << 20
    assert _files_in(tmp_path / "cache") == []
    monkeypatch.setenv("MVIT_DET_DOWNLOAD_MAX_BYTES", "lots")
    with pytest.raises(CheckpointNotFoundError, match="MVIT_DET_DOWNLOAD_MAX_BYTES='lots'"):
        read_checkpoint(f"{base}/unannounced.pth")


_CHILD = "import sys; from mvit_det.checkpoint import read_checkpoint; read_checkpoint(sys.argv[1])"


def _start_download_child(url: str, cache: Path) -> Tuple[subprocess.Popen, Path]:
    """A process downloading ``url``; returns it once its temporary file exists."""
    env = {**os.environ, "FVCORE_CACHE": str(cache)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url], cwd=str(REPO), env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        temporary = [p for p in cache.rglob(".*.tmp")]
        if temporary:
            return child, temporary[0]
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the download did not start")


def test_killed_downloads_leave_no_temporary_file(server, tmp_path: Path) -> None:
    """SIGTERM during a download removes the partial file (and the process still ends by
    SIGTERM); after SIGKILL, the next download of the file removes it."""
    base, state = server
    data = _weights_file(tmp_path)
    state["files"]["/slow.pth"] = ("drip", data)
    cache = tmp_path / "cache"
    child, temporary = _start_download_child(f"{base}/slow.pth", cache)
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == -signal.SIGTERM
    assert not temporary.exists() and _files_in(cache) == []

    child, temporary = _start_download_child(f"{base}/slow.pth", cache)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL and temporary.exists()
    state["files"]["/slow.pth"] = data
    assert read_checkpoint(f"{base}/slow.pth").kind == "official"
    assert not temporary.exists() and not list(cache.rglob("*.tmp"))


def test_truncated_cached_pickle_is_fetched_again(server, tmp_path: Path) -> None:
    """A pickle cut off in the cache (no size to check it against) fails to load: the cached
    copy is replaced by a new download."""
    base, state = server
    data = pickle.dumps({"model": {k: v.numpy() for k, v in official_state(**TINY).items()}})
    state["files"]["/w.pkl"] = data
    cached = tmp_path / "cache" / _host_folder(base) / "w.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[: len(data) // 2])
    assert read_checkpoint(f"{base}/w.pkl").kind == "detectron2"
    assert cached.read_bytes() == data and state["hits"]["/w.pkl"] == 1
    with pytest.raises(TruncatedCheckpointError):
        cached.write_bytes(data[: len(data) // 2])
        read_checkpoint(str(cached))  # a local file is not fetched: the error stands


def test_torchscript_programs_are_named_not_run(tmp_path: Path) -> None:
    """A TorchScript archive (as export writes) is a program, not weights: named as such
    without trust, never handed to torch.jit.load."""
    path = tmp_path / "model.pth"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(NotACheckpointError, match="TorchScript program"):
        read_checkpoint(str(path))


def _patched_torch_file(old: bytes, new: bytes) -> bytes:
    """torch.save({"w": torch.ones(4)}) with ``old`` replaced by ``new`` in its data.pkl (the zip
    CRCs are written anew, as a crafted file would have them)."""
    raw = io.BytesIO()
    torch.save({"w": torch.ones(4)}, raw)
    source, out = zipfile.ZipFile(raw), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert data.count(old) == 1
                data = data.replace(old, new)
            archive.writestr(info, data)
    return out.getvalue()


def test_torch_files_whose_sizes_disagree_are_refused(tmp_path: Path) -> None:
    """A storage that claims more elements than its record holds, or a tensor that reaches past
    its storage (torch.load itself would read past the memory of the record): damaged, with
    the sizes named."""
    path = tmp_path / "crafted.pth"
    big = b"J" + (1 << 28).to_bytes(4, "little")  # BININT 2**28
    for old, new, expected in (
        (b"K\x04t", big + b"t", "has 16 bytes, but the storage that refers to it needs 1073741824"),
        (
            b"K\x04\x85",
            big + b"\x85",
            "size [268435456] reaches byte 1073741824 of a storage of 16",
        ),
    ):
        path.write_bytes(_patched_torch_file(old, new))
        with pytest.raises(DamagedCheckpointError, match=re.escape(expected)):
            read_checkpoint(str(path))
