"""Untrusted files never run code; downloads time out, verify and heal; damaged files, odd
containers and bad outputs are named before any work."""

from __future__ import annotations

import builtins
import hashlib
import http.server
import logging
import pickle
import socket
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn

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
    read_checkpoint,
)
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


def write_malicious(path: Path, marker: Path) -> Path:
    """A checkpoint of valid weights that also carries code, in the container of its suffix."""
    weights = {"w": torch.ones(2)}
    if path.suffix == ".pkl":
        data = {
            "model": {"w": np.ones(2, np.float32)},
            "__author__": "x",
            "x": _WritesMarker(marker),
        }
        path.write_bytes(pickle.dumps(data))
    else:
        data = {"model": weights, "x": _WritesMarker(marker)}
        torch.save(data, path, _use_new_zipfile_serialization=path.suffix == ".pth")
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".pyth"])
def test_malicious_files_do_not_run_without_opt_in(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "code_ran"
    path = str(write_malicious(tmp_path / f"model{suffix}", marker))
    expected = r"pickles Python objects \(io.open\).*--trust-checkpoint.*trust=True"
    with pytest.raises(UnsafeCheckpointError, match=expected):
        read_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        MViTCheckpointer(Detector(**TINY)).load(path)
    with pytest.raises(UnsafeCheckpointError):  # Detectron2's loading path, for other models
        MViTCheckpointer(nn.Linear(2, 2)).load(path)
    out = tmp_path / "out.pkl"
    assert convert_tool.main([path, str(out), "--model", "T"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not out.exists()
    assert not marker.exists()

    read_checkpoint(path, trust=True)  # the explicit opt-in unpickles in full
    assert marker.exists()


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
    """Python-2-era pickles with OrderedDicts, numpy arrays and scalars; numpy in torch files."""
    weights = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.zeros(2, np.int64))
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "step": np.float64(3.0)}, protocol=2))
    ckpt = read_checkpoint(str(path))
    assert ckpt.extra["step"] == 3.0 and torch.equal(ckpt.state["w"], torch.arange(6.0).view(2, 3))

    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}}))
    with pytest.raises(UnsafeCheckpointError, match="numpy.dtype"):
        read_checkpoint(str(objects))
    torch.save({"model": {"w": np.array([1, "a"], dtype=object)}}, tmp_path / "objects.pth")
    with pytest.raises(UnsafeCheckpointError):
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
# Downloads, from a server in a thread of the test.


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[str, Dict]]:
    """An HTTP server on 127.0.0.1 serving ``files`` (path -> bytes, or ("cut", bytes) for a
    body cut off after half its announced length); ``hits`` counts requests per path. The
    download cache is a fresh folder."""
    files: Dict[str, object] = {}
    hits: Dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            cut = isinstance(body, tuple)
            data = body[1] if cut else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if cut else data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    yield f"http://127.0.0.1:{httpd.server_address[1]}", {"files": files, "hits": hits}
    httpd.shutdown()
    httpd.server_close()


def _weights_file(tmp_path: Path) -> bytes:
    path = tmp_path / "src.pth"
    torch.save({"model_state": official_state(**TINY)}, path)
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
    cached = tmp_path / "cache" / "zoo" / "mvit" / "weights.pth"
    assert cached.read_bytes() == data
    read_checkpoint(url)
    assert state["hits"]["/zoo/mvit/weights.pth"] == 1  # from the cache

    with pytest.raises(ChecksumMismatchError, match=f"not the expected {'0' * 64}"):
        read_checkpoint(url, sha256="0" * 64)
    assert not cached.exists()  # a file that fails the check is not kept

    # A cached HTML error page (as an interrupted or failed download leaves) is fetched again.
    cached.write_bytes(b"<!DOCTYPE html><html>503 Service Unavailable</html>")
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(url).kind == "official"
    assert "is not a checkpoint: it is an HTML/XML page" in caplog.text and "again" in caplog.text
    assert cached.read_bytes() == data

    # detectron2:// URLs are fetched from Detectron2's host into the same cache layout.
    monkeypatch.setattr(checkpoint_download, "_DETECTRON2_HOST", f"{base}/d2/")
    state["files"]["/d2/ImageNetPretrained/x.pth"] = data
    assert read_checkpoint("detectron2://ImageNetPretrained/x.pth").kind == "official"
    assert (tmp_path / "cache" / "d2" / "ImageNetPretrained" / "x.pth").exists()


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
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".pth"]


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


def test_truncated_cached_pickle_is_fetched_again(server, tmp_path: Path) -> None:
    """A pickle cut off in the cache (no size to check it against) fails to load: the cached
    copy is replaced by a new download."""
    base, state = server
    data = pickle.dumps({"model": {k: v.numpy() for k, v in official_state(**TINY).items()}})
    state["files"]["/w.pkl"] = data
    cached = tmp_path / "cache" / "w.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[: len(data) // 2])
    assert read_checkpoint(f"{base}/w.pkl").kind == "detectron2"
    assert cached.read_bytes() == data and state["hits"]["/w.pkl"] == 1
    with pytest.raises(TruncatedCheckpointError):
        cached.write_bytes(data[: len(data) // 2])
        read_checkpoint(str(cached))  # a local file is not fetched: the error stands
