"""Training with two processes on the CPU (gloo), as multi-GPU runs do with NCCL; the output
folder's lock, held by the launcher and its training processes, which die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, List

import pytest
import torch
from detectron2.engine import launch
from detectron2.utils import comm
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mvit_det.engine import train_net

from helpers import REPO
from test_train_net import DEMO, TINY, TOOL

ITERATIONS = 3


def _train_and_report(out_dir: str, argv: List[str]) -> None:
    """One training process: counts the gradient all-reduces (backward passes whose last bucket
    was synchronised) and saves its final weights as ``rank{r}.pt``."""
    wrapped = []
    syncs = [0]
    wrap = train_net._wrap_ddp

    def counting_allreduce(process_group, bucket):
        syncs[0] += bucket.is_last()
        return allreduce_hook(process_group, bucket)

    def wrap_and_count(model, **options):
        ddp = wrap(model, **options)
        ddp.register_comm_hook(None, counting_allreduce)
        wrapped.append(ddp)
        return ddp

    train_net._wrap_ddp = wrap_and_count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_net.main(train_net.build_argument_parser().parse_args(argv))
    report = {"weights": wrapped[0].module.state_dict(), "syncs": syncs[0]}
    torch.save(report, os.path.join(out_dir, f"rank{comm.get_rank()}.pt"))


def test_two_processes_train_identical_weights_with_one_sync_per_step(
    shapes_datasets_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_datasets_root)  # for the spawned processes
    out = tmp_path / "run"
    argv = ["--config-file", str(REPO / DEMO), "--grad-accumulation", "2"] + TINY
    argv += [
        f"train.output_dir={out}",
        "dataloader.train.total_batch_size=4",  # 1 image per process and micro-batch
        f"train.max_iter={ITERATIONS}",
        "train.eval_period=0",
        "lr_multiplier.scheduler.milestones=[1,2]",
    ]
    launch(_train_and_report, 2, dist_url="auto", args=(str(tmp_path), argv))

    reports = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # 2 micro-batches per step, but only the last one's backward synchronises the gradients
    assert [r["syncs"] for r in reports] == [ITERATIONS, ITERATIONS]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == ITERATIONS - 1 and len(final["trainer"]["data"]) == 2
    for name, value in reports[0]["weights"].items():
        assert torch.equal(value, reports[1]["weights"][name]), name
        assert torch.equal(value, final["model"][name]), name
    # the data position of every rank is saved
    assert all(d["next"] >= 2 * ITERATIONS for d in final["trainer"]["data"])


def _hold_the_lock(index: int, lock: train_net.OutputLock, ready: str) -> None:
    """A process started with the output lock, as a training process is: it joins the lock,
    says so, and waits to be killed."""
    lock.join()
    Path(ready).write_text(str(os.getpid()))
    time.sleep(300)


class _LauncherStops(BaseException):
    """Stands for Ctrl-C or the death of the launcher: it lets go of its lock descriptor."""


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_process_started_with_the_lock_holds_it_after_the_launcher_lets_go(
    tmp_path: Path,
) -> None:
    out, ready = tmp_path / "run", tmp_path / "ready"
    with pytest.raises(_LauncherStops):
        with train_net.training_output_dir(str(out)) as lock:
            context = torch.multiprocessing.start_processes(
                _hold_the_lock, args=(lock, str(ready)), join=False, start_method="spawn"
            )
            _wait_for(ready.exists, 120, "the process to join the lock")
            raise _LauncherStops
    (child,) = context.processes
    try:
        refused = rf"in use by another training run \(processes {os.getpid()}, {child.pid}\)"
        with pytest.raises(train_net.UsageError, match=refused):
            with train_net.training_output_dir(str(out)):
                pass
    finally:
        child.kill()
        child.join()
    with train_net.training_output_dir(str(out)):  # free once the last holder ended
        assert (out / ".train.lock").read_text() == str(os.getpid())


def _proc_stat(pid: int) -> List[str]:
    """Fields of /proc/PID/stat after the command name: state, parent id, ...; [] if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    """Running (not ended, nor a zombie waiting to be reaped)."""
    stat = _proc_stat(pid)
    return bool(stat) and stat[0] not in ("Z", "X")


def _children(pid: int) -> List[int]:
    return [
        int(p) for p in os.listdir("/proc") if p.isdigit() and _proc_stat(int(p))[1:2] == [str(pid)]
    ]


def _sizes(folder: Path) -> dict:
    """Sizes of the files in ``folder`` but the lock file (which a new run rewrites)."""
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.name != ".train.lock"}


def _kill_if_spawned(pid: int) -> None:
    """Kills ``pid`` if it still is a process that multiprocessing started."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except FileNotFoundError:
        return
    if _alive(pid) and b"multiprocessing" in command:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_training_processes_hold_the_lock_and_die_with_the_launcher(
    shapes_datasets_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The launcher of 2 training processes is killed (SIGKILL) while they train: they end at
    once, writing nothing more (no final metrics or log lines), and a second run in the folder
    is refused until none of them lives."""
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_datasets_root)
    out = tmp_path / "run"
    argv = ["--config-file", str(REPO / DEMO), "--num-gpus", "2"] + TINY
    argv += [f"train.output_dir={out}", "train.max_iter=1000"]
    argv += ["lr_multiplier.scheduler.milestones=[800,900]", "train.eval_period=0"]
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            [sys.executable, TOOL] + argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    lock_file = out / ".train.lock"
    workers: List[int] = []
    spawned: List[int] = []  # the launcher's children, to end if the test fails
    try:

        def all_joined() -> bool:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
            spawned.extend(set(_children(launcher.pid)) - set(spawned))
            holders = lock_file.read_text().split() if lock_file.exists() else []
            # a training process joins the lock before it writes its log
            started = (out / "log.txt.rank1").exists()
            assert len(holders) == 3 or not started, f"training without the lock: {holders}"
            return len(holders) == 3

        def training() -> bool:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
            log = out / "log.txt"
            return log.exists() and "Starting training from iteration 0" in log.read_text()

        _wait_for(all_joined, 240, "the training processes to join the lock")
        _wait_for(training, 240, "training to start")
        ids = [int(i) for i in lock_file.read_text().split()]
        workers = ids[1:]
        assert ids[0] == launcher.pid and sorted(workers) == sorted(
            p for p in _children(launcher.pid) if p in workers
        )
        accepted: List[List[int]] = []  # training processes alive when a new run got the lock

        def new_run(*args: Any, **kwargs: Any) -> None:
            accepted.append([w for w in workers if _alive(w)])

        monkeypatch.setattr(train_net, "launch", new_run)
        written = _sizes(out)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 20
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no CUDA: CPU processes
            while not accepted and time.time() < deadline:
                if train_net.run_cli(["--resume"] + argv) == 2:
                    assert "is in use by another training run (processes" in capsys.readouterr().err
                    time.sleep(0.2)
        assert accepted == [[]], f"alive: {[w for w in workers if _alive(w)]}"
        assert _sizes(out) == written  # nothing written after the launcher died
    finally:
        launcher.kill()
        launcher.wait()
        for pid in set(workers + spawned):
            _kill_if_spawned(pid)
