#!/usr/bin/env python
"""The standing fault check: puts deliberate bugs into a copy of the code, one at a time, and
runs the tests that should notice each.

The faults are listed in ``tests/faults.py`` (a text substitution in one file, and the tests
that must fail). For every fault the tool applies the substitution to a scratch copy of the
repository (the checkout itself is never modified), runs those tests there with pytest, and
records whether they failed. First it runs all the listed tests once without any fault: a test
that fails anyway proves nothing, so the check stops there.

    python tools/fault_check.py                 # every fault; exit status 0 iff all are caught
    python tools/fault_check.py --only NAME ... # some faults (names or substrings)
    python tools/fault_check.py --list          # the catalogue
    python tools/fault_check.py --update-doc docs/testing.md   # also write the table there

The table has one row per fault: its name, the file it changes, the tests that failed and
whether it was caught. A fault counts as caught only when pytest reports failed tests (exit
status 1); a collection error, a timeout or tests that pass are not caught.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOGUE = os.path.join(REPO, "tests", "faults.py")
# What the scratch copy leaves out: environments, caches, outputs.
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "output", "datasets", "build"
)
TABLE_BEGIN = "<!-- fault table: written by tools/fault_check.py --update-doc -->"
TABLE_END = "<!-- end of fault table -->"


@dataclass
class Fault:
    """One deliberate bug: replace ``old`` (which must occur exactly once) by ``new`` in
    ``file``; ``tests`` (pytest node ids or files, relative to the repository) must fail."""

    name: str
    file: str
    old: str
    new: str
    tests: List[str]
    what: str = ""


@dataclass
class Outcome:
    fault: Fault
    status: str  # "caught", "missed", "error", "timeout", "stale"
    failed: List[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""


def load_faults(path: str = CATALOGUE) -> List[Fault]:
    """The catalogue: ``FAULTS``, a list of dicts with the fields of :class:`Fault`."""
    entries = runpy.run_path(path)["FAULTS"]
    faults = [Fault(**entry) for entry in entries]
    names = [f.name for f in faults]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"error: {path}: fault names used twice: {', '.join(duplicates)}")
    return faults


def apply_fault(source: str, fault: Fault) -> str:
    """``source`` with the fault's substitution made; ValueError unless ``old`` occurs exactly
    once (a fault whose text has changed must be updated, not skipped)."""
    count = source.count(fault.old)
    if count != 1:
        raise ValueError(
            f"fault {fault.name!r}: the text to replace occurs {count} times in {fault.file} "
            "(it must occur exactly once); update tests/faults.py to the current code"
        )
    return source.replace(fault.old, fault.new)


def failed_tests(output: str) -> List[str]:
    """The node ids that the short test summary of pytest's output names as FAILED or ERROR
    (captured log lines elsewhere in the output also start with "ERROR")."""
    _, marker, summary = output.rpartition("short test summary info")
    failed = []
    for line in summary.splitlines() if marker else []:
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                failed.append(line[len(tag) :].split(" - ")[0].strip())
    return failed


def run_pytest(
    python: str, copy: str, tests: Sequence[str], timeout: float, stop_first: bool = True
) -> subprocess.CompletedProcess:
    """pytest on ``tests`` inside the scratch copy, importing the copy's ``mvit_det``."""
    env = dict(os.environ, PYTHONPATH=copy + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    cmd = [python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header"]
    cmd += (["-x"] if stop_first else []) + list(tests)
    return subprocess.run(
        cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_imports_copy(python: str, copy: str, faults: Sequence[Fault]) -> None:
    """Stops unless the tests would import the scratch copy's packages (those the faults
    change): an installed copy earlier on the path would hide every fault."""
    env = dict(os.environ, PYTHONPATH=copy + os.pathsep + os.environ.get("PYTHONPATH", ""))
    packages = sorted(
        {
            f.file.split("/")[0]
            for f in faults
            if "/" in f.file
            and os.path.isfile(os.path.join(copy, f.file.split("/")[0], "__init__.py"))
        }
    )
    for package in packages:
        found = subprocess.run(
            [python, "-c", f"import {package}; print({package}.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not found.startswith(copy):
            raise SystemExit(
                f"error: the tests would import {package} from {found or '(nowhere)'}, not from "
                f"the scratch copy {copy}; install it in editable mode (pip install -e .)"
            )


def check_fault(python: str, copy: str, fault: Fault, timeout: float) -> Outcome:
    """Applies ``fault`` in ``copy``, runs its tests and restores the file."""
    path = os.path.join(copy, fault.file)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    try:
        faulty = apply_fault(original, fault)
    except ValueError as e:
        return Outcome(fault, "stale", detail=str(e))
    start = time.perf_counter()
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(faulty)
        try:
            result = run_pytest(python, copy, fault.tests, timeout)
        except subprocess.TimeoutExpired:
            return Outcome(fault, "timeout", seconds=time.perf_counter() - start)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode == 1:
        return Outcome(fault, "caught", failed_tests(output), seconds)
    if result.returncode == 0:
        return Outcome(fault, "missed", seconds=seconds)
    return Outcome(fault, "error", seconds=seconds, detail=output[-2000:])


def _short(test: str) -> str:
    return test.replace("tests/", "")


def markdown_table(outcomes: Sequence[Outcome]) -> str:
    """One row per fault: name, file, the tests that failed, caught or not."""
    rows = ["| # | fault | file | failed tests | caught |", "|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        failed = "<br>".join(f"`{_short(t)}`" for t in o.failed[:3]) or "none"
        if len(o.failed) > 3:
            failed += f" (+{len(o.failed) - 3})"
        caught = "yes" if o.status == "caught" else f"**no ({o.status})**"
        rows.append(f"| {i} | {o.fault.name} | `{o.fault.file}` | {failed} | {caught} |")
    return "\n".join(rows)


def update_doc(path: str, table: str, summary: str) -> None:
    """Replaces the text between the table markers of ``path`` with ``summary`` and ``table``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"error: {path} has no fault-table markers ({TABLE_BEGIN!r} ... )")
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    new = f"{head}{TABLE_BEGIN}\n{summary}\n\n{table}\n{TABLE_END}{tail}"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


def select(faults: List[Fault], only: Optional[Sequence[str]]) -> List[Fault]:
    if not only:
        return faults
    chosen = [f for f in faults if any(key in f.name for key in only)]
    if not chosen:
        raise SystemExit(f"error: no fault matches {list(only)}; see --list")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="faults whose name contains")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with the test dependencies"
    )
    parser.add_argument("--update-doc", metavar="MD", help="write the table into this file")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not run the tests once without faults"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    faults = select(load_faults(), args.only)
    if args.list:
        for f in faults:
            print(f"{f.name:40s} {f.file}\n    {f.what}\n    tests: {' '.join(f.tests)}")
        return 0
    if args.timeout <= 0:
        raise SystemExit("error: --timeout must be positive")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mvit_det_faults_") as scratch:
        copy = os.path.join(scratch, "repo")
        # symlinks=True: links inside the repository (the model zoo's configs) stay links, so
        # a fault in a linked file reaches every path that reads it.
        shutil.copytree(REPO, copy, ignore=SKIP, symlinks=True)
        check_imports_copy(args.python, copy, faults)
        if not args.skip_baseline:
            tests = sorted({t for f in faults for t in f.tests})
            print(f"baseline: {len(tests)} test selections without faults ...", flush=True)
            base = run_pytest(args.python, copy, tests, 4 * args.timeout, stop_first=False)
            if base.returncode != 0:
                print(base.stdout[-4000:] + base.stderr[-2000:])
                print("error: the tests fail without any fault; fix them first", file=sys.stderr)
                return 2
            print(f"baseline: all pass ({time.perf_counter() - start:.0f} s)", flush=True)
        outcomes = []
        for i, fault in enumerate(faults, 1):
            outcome = check_fault(args.python, copy, fault, args.timeout)
            outcomes.append(outcome)
            mark = "caught" if outcome.status == "caught" else outcome.status.upper()
            print(f"[{i}/{len(faults)}] {mark:7s} {fault.name} ({outcome.seconds:.0f} s)")
            if outcome.detail:
                print("    " + outcome.detail.strip().replace("\n", "\n    ")[-1500:])
            sys.stdout.flush()
    table = markdown_table(outcomes)
    caught = sum(o.status == "caught" for o in outcomes)
    minutes = (time.perf_counter() - start) / 60
    summary = f"{caught} of {len(outcomes)} faults caught, in {minutes:.1f} min."
    print("\n" + table + "\n\n" + summary)
    if args.update_doc:
        update_doc(args.update_doc, table, summary)
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
