"""The standing fault check (tools/fault_check.py): its catalogue stays in step with the code,
and the tool applies, restores and reports faults as it says."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO


def _load_tool():
    spec = importlib.util.spec_from_file_location("fault_check", REPO / "tools" / "fault_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fault_check = _load_tool()
FAULTS = fault_check.load_faults()


def test_catalogue_is_large_and_covers_every_area():
    assert len(FAULTS) >= 25
    files = {f.file for f in FAULTS}
    for area in (
        "mvit_det/modeling/backbones/mvit/attention.py",
        "mvit_det/modeling/backbones/mvit/model.py",
        "mvit_det/modeling/backbones/vil/model.py",
        "mvit_det/modeling/backbones/vil/attention.py",
        "mvit_det/checkpoint/io.py",
        "mvit_det/checkpoint/mapping.py",
        "mvit_det/engine/train_loader.py",
        "mvit_det/tools/export.py",
        "mvit_det/tools/predict.py",
    ):
        assert area in files, f"no fault in {area}"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_every_fault_applies_to_the_current_code(fault):
    """Each fault's text occurs exactly once in its file, changes it, and names tests that
    exist: a fault that no longer applies would silently check nothing."""
    source = (REPO / fault.file).read_text(encoding="utf-8")
    assert source.count(fault.old) == 1, f"{fault.name}: text not found once in {fault.file}"
    assert fault.new != fault.old
    assert fault.what, f"{fault.name}: say what the fault breaks"
    assert fault.tests
    for test in fault.tests:
        path = test.split("::")[0]
        assert (REPO / path).is_file(), f"{fault.name}: no test file {path}"
        if "::" in test:
            name = test.split("::")[1].split("[")[0]
            assert f"def {name}(" in (REPO / path).read_text(), f"{fault.name}: no test {test}"


def test_apply_fault_refuses_text_that_is_not_there_once():
    fault = fault_check.Fault("f", "x.py", "a = 1", "a = 2", ["tests/t.py"], "")
    assert fault_check.apply_fault("a = 1\nb = 2\n", fault) == "a = 2\nb = 2\n"
    with pytest.raises(ValueError, match="occurs 0 times"):
        fault_check.apply_fault("b = 2\n", fault)
    with pytest.raises(ValueError, match="occurs 2 times"):
        fault_check.apply_fault("a = 1\na = 1\n", fault)


def test_failed_tests_are_read_from_pytest_summary():
    """Only the summary counts: captured log lines above it also start with ERROR."""
    output = textwrap.dedent("""\
        ..F
        ERROR    detectron2.engine.train_loop:train_loop.py:162 Exception during training
        =========================== short test summary info ============================
        FAILED tests/test_a.py::test_x[1] - AssertionError: boom
        ERROR tests/test_b.py::test_y - RuntimeError
        1 failed, 2 passed
        """)
    assert fault_check.failed_tests(output) == [
        "tests/test_a.py::test_x[1]",
        "tests/test_b.py::test_y",
    ]


def test_tool_catches_a_fault_and_reports_a_missed_one(tmp_path: Path):
    """End to end on a scratch project: a fault its test notices is caught, one it does not is
    missed (exit status 1), and the project's file is unchanged afterwards."""
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pkg" / "__init__.py").write_text("def double(x):\n    return 2 * x\n\nUNUSED = 1\n")
    (project / "tests" / "test_pkg.py").write_text(
        "from pkg import double\n\ndef test_double():\n    assert double(3) == 6\n"
    )
    (project / "tests" / "faults.py").write_text(textwrap.dedent("""\
            FAULTS = [
                dict(name="triple", file="pkg/__init__.py", old="2 * x", new="3 * x",
                     tests=["tests/test_pkg.py"], what="doubles wrongly"),
                dict(name="unused", file="pkg/__init__.py", old="UNUSED = 1", new="UNUSED = 2",
                     tests=["tests/test_pkg.py"], what="changes nothing tested"),
            ]
            """))
    tool = project / "tools" / "fault_check.py"
    tool.parent.mkdir()
    tool.write_text((REPO / "tools" / "fault_check.py").read_text())
    doc = project / "testing.md"
    doc.write_text(f"intro\n{fault_check.TABLE_BEGIN}\nold\n{fault_check.TABLE_END}\nend\n")
    before = (project / "pkg" / "__init__.py").read_text()
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, str(tool), "--update-doc", str(doc)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| 1 | triple | `pkg/__init__.py` | `test_pkg.py::test_double` | yes |" in result.stdout
    assert "| 2 | unused | `pkg/__init__.py` | none | **no (missed)** |" in result.stdout
    assert "1 of 2 faults caught" in result.stdout
    assert (project / "pkg" / "__init__.py").read_text() == before
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| 1 | triple |" in text
