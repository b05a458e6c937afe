"""tools/demo.py and tools/benchmark.py reject bad arguments before doing any work; the examples
of the tools' --help and of docs/tools.md are commands their parsers accept."""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from typing import List

import pytest

from mvit_det.tools import analyze, benchmark, convert_checkpoint, demo, evaluate, export
from mvit_det.tools import plot_metrics, predict
from mvit_det.utils.file_io import file_lock

from helpers import REPO


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


# The tools whose logic is in mvit_det.tools and whose --help and docs/tools.md show examples.
EXAMPLE_TOOLS = {
    "predict": predict,
    "evaluate": evaluate,
    "export": export,
    "analyze": analyze,
    "convert_checkpoint": convert_checkpoint,
    "plot_metrics": plot_metrics,
}


def _example_commands(text: str, tool: str) -> List[List[str]]:
    """Each ``python tools/<tool>.py ...`` command of a text, its ``\\`` continuation lines
    joined, as the lines it was written on."""
    lines = text.splitlines()
    commands = []
    for i, line in enumerate(lines):
        if line.strip().startswith(f"python tools/{tool}.py"):
            command = [line.strip()]
            while command[-1].endswith("\\"):
                i += 1
                command.append(lines[i].strip())
            commands.append(command)
    return commands


def _check_examples(commands: List[List[str]], module, where: str) -> None:
    """Every command is written without gaps and parses with the tool's own parser."""
    for lines in commands:
        for line in lines:
            assert "  " not in line, f"{where}: a gap in {line!r}"
        words = shlex.split(" ".join(line.rstrip("\\") for line in lines))
        try:
            module.parse_args(words[2:])
        except SystemExit as e:
            raise AssertionError(f"{where}: {' '.join(words)} does not parse") from e


@pytest.mark.parametrize("tool", list(EXAMPLE_TOOLS))
def test_help_examples_parse_with_the_tools_parser(
    tool: str, capsys: pytest.CaptureFixture
) -> None:
    module = EXAMPLE_TOOLS[tool]
    with pytest.raises(SystemExit) as info:
        module.parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    commands = _example_commands(text, tool)
    assert len(commands) >= 2, text  # the examples are there
    _check_examples(commands, module, f"{tool} --help")
    # and those of docs/tools.md
    docs = (REPO / "docs" / "tools.md").read_text()
    _check_examples(_example_commands(docs, tool), module, "docs/tools.md")


def test_help_example_check_finds_gaps_and_bad_options() -> None:
    text = "  python tools/analyze.py --config a.py \\\n      --backbone\n"
    _check_examples(_example_commands(text, "analyze"), analyze, "ok")
    for bad in (
        "  python tools/analyze.py --config a.py       --backbone\n",  # a swallowed newline
        "  python tools/analyze.py --config a.py \\\n      --no-such-option\n",
    ):
        with pytest.raises(AssertionError):
            _check_examples(_example_commands(bad, "analyze"), analyze, "bad")


def test_the_checkpointer_is_importable_from_the_package() -> None:
    """The README's ``from mvit_det import MViTCheckpointer``."""
    import mvit_det
    from mvit_det.checkpoint import MViTCheckpointer

    namespace: dict = {}
    exec("from mvit_det import MViTCheckpointer", namespace)
    assert namespace["MViTCheckpointer"] is MViTCheckpointer
    assert "MViTCheckpointer" in mvit_det.__all__
    assert "MViTCheckpointer" in (REPO / "README.md").read_text()
