"""tools/demo.py and tools/benchmark.py reject bad arguments before doing any work."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from mvit_det.tools import benchmark, demo
from mvit_det.utils.file_io import file_lock


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


def test_demo_checks_arguments_overrides_and_output_first(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "setup", _no_work)  # would generate the dataset
    with pytest.raises(SystemExit) as info:
        demo.main(["--num-vis", "-1"])
    assert info.value.code == 2 and "--num-vis must be >= 0, got -1" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert demo.main(["--output-dir", str(tmp_path), "train.max_iterr=3"]) == 2
        assert "Unknown config key 'train.max_iterr'" in capsys.readouterr().err
        with file_lock(os.path.join(tmp_path, ".train.lock")):
            assert demo.main(["--output-dir", str(tmp_path)]) == 2
    assert "in use by another training run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iters", "0"], "--iters must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--image-size", "100"], "--image-size must be a positive multiple of 32"),
        (["--infer-size", "800"], "--infer-size must be HxW"),
        (["--tasks", "backbone,trian"], "unknown task"),
    ],
)
def test_benchmark_rejects_bad_sizes_and_counts(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        benchmark.parse_args(["--device", "cpu"] + argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
