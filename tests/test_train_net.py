"""tools/lazyconfig_train_net.py: evaluation, training with kill + resume, and usage errors."""

import fnmatch
import json
import os
import re
import resource
import signal
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from mvit_det.data import datasets
from mvit_det.data.shapes import shapes_dataset_files
from mvit_det.engine import train_net
from mvit_det.engine.metrics_plot import plot_metrics
from mvit_det.engine.train_net import build_argument_parser, main, run_cli, setup
from mvit_det.utils.file_io import file_lock

from helpers import REPO

TOOL = os.path.join(REPO, "tools", "lazyconfig_train_net.py")
DEMO = "configs/demo/mask_rcnn_mvitv2_shapes.py"
# The demo config with a 4-block, 16-dim MViT and small batches at 128 px.
TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    "model.roi_heads.batch_size_per_image=32",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.1.target_height=128",
    "dataloader.train.mapper.augmentations.1.target_width=128",
    "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
]


def test_eval_only_returns_coco_metrics(shapes_datasets_root, tmp_path):
    args = build_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, DEMO), "--eval-only", f"train.output_dir={tmp_path}"]
        + TINY
    )
    with pytest.warns(UserWarning, match="CUDA is not available"):
        results = main(args)
    for task in ("bbox", "segm"):
        metrics = results[task]
        assert {"AP", "AP50", "AP75", "AP-circle", "AP-triangle", "AP-square"} <= set(metrics)
        assert 0.0 <= metrics["AP"] <= 100.0
    assert os.path.isfile(tmp_path / "inference" / "coco_instances_results.json")
    assert os.path.isfile(tmp_path / "config.yaml")


# The training tool, killed with SIGKILL as soon as the checkpoint named by its first argument
# is written and tagged: the worst moment for the state it leaves.
KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
from mvit_det.checkpoint import MViTCheckpointer
from mvit_det.engine.train_net import run_cli

save = MViTCheckpointer.save

def save_then_die(self, name, **kwargs):
    save(self, name, **kwargs)
    if name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

MViTCheckpointer.save = save_then_die
sys.exit(run_cli(sys.argv[2:]))
"""


def _tool(args, env, log_path, kill_after=None, **popen_options):
    """Starts the training tool on the demo config with its output going to ``log_path``;
    ``kill_after``: the checkpoint (e.g. "model_0000001") after which it is killed."""
    command = [TOOL] if kill_after is None else ["-c", KILLED_AFTER_CHECKPOINT, kill_after]
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the tool
        return subprocess.Popen(
            [sys.executable] + command + ["--config-file", os.path.join(REPO, DEMO)] + args + TINY,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen_options,
        )


# 6 iterations of 2 micro-batches of 2 images (landscape and portrait images are batched apart,
# so the loader holds waiting images at the checkpoints), checkpoints every 2 iterations.
RUN = [
    "--grad-accumulation",
    "2",
    "dataloader.train.total_batch_size=4",
    "train.max_iter=6",
    "train.checkpointer.period=2",
    "train.eval_period=6",
    "train.log_period=2",
    "lr_multiplier.scheduler.milestones=[4,5]",
]


# Keys of metrics.json records that measure time, which no two runs share.
TIMES = {"time", "data_time", "rank_data_time", "eta_seconds"}


def _metrics(out):
    """metrics.json's records without their times."""
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def _logged_iterations(out):
    return [r["iteration"] for r in _metrics(out) if "total_loss" in r]


def test_kill_and_resume_equals_an_uninterrupted_run(shapes_datasets_root, tmp_path, capsys):
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_datasets_root)
    whole, out = str(tmp_path / "whole"), str(tmp_path / "run")
    reference = _tool(RUN + [f"train.output_dir={whole}"], env, tmp_path / "whole.log")
    assert reference.wait(timeout=400) == 0, (tmp_path / "whole.log").read_text()

    # Killed (SIGKILL) right after the checkpoint of iteration 1 is written and tagged.
    proc = _tool(
        RUN + [f"train.output_dir={out}"], env, tmp_path / "first.log", kill_after="model_0000001"
    )
    assert proc.wait(timeout=400) == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    tag = os.path.join(out, "last_checkpoint")
    saved_iter = 1
    assert open(tag).read().strip() == "model_0000001.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    # The metrics line of an iteration is written before its checkpoint.
    assert _logged_iterations(out) == [1]
    stale = os.path.join(out, ".model_0000003.pth.k1ll3d.tmp")  # as a write killed midway leaves
    open(stale, "wb").write(b"half a checkpoint")

    resumed = _tool(["--resume"] + RUN + [f"train.output_dir={out}"], env, tmp_path / "resumed.log")
    returncode = resumed.wait(timeout=400)
    log = (tmp_path / "resumed.log").read_text()
    assert returncode == 0, log
    assert f"Resuming from iteration {saved_iter + 1}" in log
    assert f"Starting training from iteration {saved_iter + 1}" in log
    assert "eta:" in log and "total_loss" in log  # progress with ETA and losses
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert not os.path.exists(stale)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))

    # The interrupted run ends with the uninterrupted run's weights, bit for bit, and its
    # checkpoints hold plain data only.
    expected = torch.load(os.path.join(whole, "model_final.pth"), weights_only=True)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 5 and final.keys() == expected.keys()
    for name, value in expected["model"].items():
        assert torch.equal(final["model"][name], value), name
    # metrics.json: every logged iteration once, with the uninterrupted run's values (its
    # losses are medians over a window that reaches back before the checkpoint), and the
    # evaluation of the last iteration
    assert _logged_iterations(out) == _logged_iterations(whole) == [1, 3, 5]
    assert _metrics(out) == _metrics(whole)
    assert any("bbox/AP" in r for r in _metrics(out))
    # metrics.png of each run shows its whole metrics.json, the resumed one's included
    for run in (whole, out):
        again = str(tmp_path / "again.png")
        plot_metrics(os.path.join(run, "metrics.json"), again)
        picture = cv2.imread(os.path.join(run, "metrics.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(picture, cv2.imread(again, cv2.IMREAD_UNCHANGED)), run

    # Resuming a model of another shape is refused before any optimizer step.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = run_cli(
            ["--resume", "--config-file", os.path.join(REPO, DEMO)]
            + RUN[2:]
            + TINY
            + [f"train.output_dir={out}", "model.roi_heads.num_classes=5"]
        )
    err = capsys.readouterr().err
    assert status == 2 and re.search(r"^error: cannot resume from .*model_final.pth", err, re.M)
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint [4, 256] vs model [6, 256]" in err


def _must_not_launch(*args, **kwargs):
    raise AssertionError("the processes were launched before the problem was found")


@pytest.mark.parametrize(
    "options, overrides, message",
    [
        (
            [],
            ["train.max_iterr=5"],
            "Unknown config key 'train.max_iterr'.*Did you mean 'max_iter'",
        ),
        (["--num-gpus", "2"], ["train.max_iterr=5"], "Unknown config key 'train.max_iterr'"),
        ([], ["train.max_iter=abc"], r"'train.max_iter' expects an integer .*got 'abc'"),
        ([], ["optimizer.lr=fast"], r"'optimizer.lr' expects a number .*got 'fast'"),
        (
            [],
            ["dataloader.train.total_batch_size=0"],
            "dataloader.train.total_batch_size must be an integer >= 1, got 0",
        ),
        ([], ["train.amp.precision=half"], "train.amp.precision must be one of float16, bfloat16"),
        ([], ["dataloader.train.dataset.names=coco_2017_train"], "instances_train2017.json"),
        ([], ["dataloader.test.dataset.names=my_data"], "Dataset 'my_data' is not registered"),
        (["--register-coco", "x", "/no/such.json", "/no/images"], [], "/no/such.json"),
        (["--register-coco", "x", "{tmp}", "{tmp}"], [], "annotation file '.*' is a folder"),
        (
            ["--register-coco", "x", "{tmp}/bad.json", "{tmp}/bad.json"],
            [],
            "image root '.*bad.json' is a file",
        ),
        (
            ["--register-coco", "x", "{tmp}/bad.json", "{tmp}"],
            ["dataloader.train.dataset.names=x"],
            r"bad.json' is not valid JSON: Expecting property name .* line 1, column 2",
        ),
        (["--scale-batch-size", "3", "--grad-accumulation", "2"], [], "multiple of"),
        (
            [],
            ["lr_multiplier.scheduler.milestones=[3,5]"],
            "does not fit train.max_iter=4.*milestones",
        ),
        ([], ["optimizer.lr=nan"], "optimizer.lr must be a positive number, got nan, which is not"),
        ([], ["optimizer.lr=inf"], "optimizer.lr must be a positive number, got inf, which is not"),
        (
            [],
            ["optimizer.weight_decay=-0.1"],
            "weight_decay must be a finite number >= 0, got -0.1",
        ),
        (
            [],
            ["lr_multiplier.warmup_length=2"],
            r"warmup_length=2 is the warmup's fraction .*: 8 warmup iterations do not fit "
            r"train.max_iter=4\. For N warmup iterations set lr_multiplier.warmup_length=N/4",
        ),
        (["--num-gpus", "0"], [], "--num-gpus must be a positive integer, got 0"),
        (["--num-gpus", "-2"], [], "--num-gpus must be a positive integer, got -2"),
        (
            [],
            ["model.backbone.bottom_up.embed_dim=-1"],
            r"model.backbone.bottom_up \(MViT\): embed_dim=-1 must be an int >= 1",
        ),
        (
            [],
            ["model.backbone.bottom_up.depth=5"],
            r"last_block_indexes=\(0, 1, 2, 3\) must end at the last block, depth - 1 = 4",
        ),
        (
            ["--register-coco", "fifo_ds", "{tmp}/fifo.json", "{tmp}"],
            [],
            r"annotation file '.*fifo.json' is a FIFO \(named pipe\), not a regular file",
        ),
        (
            ["--register-coco", "zero_ds", "/dev/zero", "{tmp}"],
            [],
            "the annotation file '/dev/zero' is a device, not a regular file",
        ),
        (
            ["--register-coco", "text_ids_ds", "{tmp}/text_ids.json", "{shapes}"],
            ["dataloader.train.dataset.names=text_ids_ds"],
            r"2 images in '.*text_ids.json' have an id that is not an integer \('a', '1'\)",
        ),
    ],
)
def test_usage_errors_are_clear_and_found_before_launch(
    options, overrides, message, shapes_datasets_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no ./datasets/coco here
    monkeypatch.setattr(train_net, "launch", _must_not_launch)
    (tmp_path / "bad.json").write_text("{images: []}")
    os.mkfifo(tmp_path / "fifo.json")
    json_file, shapes = shapes_dataset_files(f"{shapes_datasets_root}/mvit_shapes", "val")
    with open(json_file) as f:
        data = json.load(f)
    data["images"][0]["id"], data["images"][1]["id"] = "a", "1"
    (tmp_path / "text_ids.json").write_text(json.dumps(data))

    def never_read_special_files(path, *args, **kwargs):
        # Reading a FIFO without writer blocks, reading /dev/zero never ends.
        assert os.path.isfile(path), f"{path} was opened for reading"
        return open(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "open", never_read_special_files, raising=False)
    options = [o.format(tmp=tmp_path, shapes=shapes) for o in options]
    argv = ["--config-file", os.path.join(REPO, DEMO)] + options + TINY
    argv += [
        f"train.output_dir={tmp_path}",
        "train.max_iter=4",
        "lr_multiplier.scheduler.milestones=[2,3]",
    ]
    argv += overrides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU warning may come before or after the check
        assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: ", err, re.M) and re.search(message, err), err


def test_vil_backbone_arguments_are_checked_before_launch(
    shapes_datasets_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(train_net, "launch", _must_not_launch)
    config = os.path.join(REPO, "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py")
    argv = ["--config-file", config, f"train.output_dir={tmp_path}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(argv + ["model.backbone.bottom_up.num_heads=[1,2,2,5]"]) == 2
    assert capsys.readouterr().err == (
        "error: model.backbone.bottom_up (ViL): embed_dims=(32, 48, 64, 96) must be divisible "
        "by num_heads=(1, 2, 2, 5) stage by stage; (dim, heads) [(96, 5)] are not.\n"
    )


def test_model_argument_errors_in_a_training_process_are_one_error_line(
    shapes_datasets_root, tmp_path, capsys, monkeypatch
):
    """A model argument error that the checks before launch do not know (here: with them
    skipped) ends the training process with one error line, not a traceback."""
    monkeypatch.setattr(train_net, "_check_backbone_args", lambda cfg: None)
    argv = ["--config-file", os.path.join(REPO, DEMO)] + TINY
    argv += [f"train.output_dir={tmp_path}", "model.backbone.bottom_up.embed_dim=-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as info:
            train_net._main_reporting_errors(build_argument_parser().parse_args(argv))
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: cannot build the model of the config (model): embed_dim=-1 must be an int >= 1\n"
    )


@pytest.mark.parametrize("option", ["--grad-accumulation", "--scale-batch-size"])
def test_counts_must_be_positive(option, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(["--config-file", os.path.join(REPO, DEMO), option, "0"])
    assert info.value.code == 2
    assert f"argument {option}: must be a positive integer, got 0" in capsys.readouterr().err


def test_output_dir_is_locked_and_must_be_writable(
    shapes_datasets_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(train_net, "launch", _must_not_launch)
    argv = ["--config-file", os.path.join(REPO, DEMO)] + TINY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with file_lock(str(tmp_path / ".train.lock")):  # as a run in progress holds it
            assert run_cli(argv + [f"train.output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another training run (process {os.getpid()})" in err
        (tmp_path / "file").write_text("")
        assert run_cli(argv + [f"train.output_dir={tmp_path / 'file' / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"^error: cannot write to the output directory .*file/run.*Not a directory", err
    )


def test_scaling_message_reaches_the_log(shapes_datasets_root, tmp_path):
    args = build_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, DEMO), "--scale-batch-size", "8"]
        + TINY
        + [f"train.output_dir={tmp_path}"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = setup(args)
    assert cfg.dataloader.train.total_batch_size == 8
    assert "Scaled the recipe by 4: {'total_batch_size': 2" in (tmp_path / "log.txt").read_text()


def _limit_file_size():
    """In the child: files may not grow past 4 MiB (writes fail with EFBIG, as on a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_full_disk_gives_one_error_line_and_no_partial_checkpoint(shapes_datasets_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_datasets_root)
    out = tmp_path / "run"
    args = [f"train.output_dir={out}", "train.max_iter=4", "train.checkpointer.period=1"]
    args += ["lr_multiplier.scheduler.milestones=[2,3]"]
    proc = subprocess.run(
        [sys.executable, TOOL, "--config-file", os.path.join(REPO, DEMO)] + args + TINY,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and re.match(
        r"error: \[Errno 27\] cannot write '.*/run/model_0000000.pth': File too large", errors[0]
    ), errors
    assert (
        sorted(p.name for p in out.iterdir() if "model" in p.name or "checkpoint" in p.name) == []
    )
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# The training tool with a linear regression on 8 records and no evaluation, whose files may not
# grow past a size limit (writes then fail with EFBIG, as on a full disk): 8000 bytes from the
# start ("setup"), or, once training starts, 1500 bytes more than the log has then ("log"), or
# 6000 bytes more, with 100 extra scalars in every metrics.json line and TensorBoard write
# ("metrics", without TensorBoard; "events", whose file grows faster than metrics.json).
FULL_DISK_CHILD = """
import os, resource, signal, sys
import torch
import torch.utils.tensorboard
from detectron2.utils.events import get_event_storage
from mvit_det.engine import ResumableTrainLoader, train_net

mode = sys.argv[1]
extra = 100 if mode in ("metrics", "events") else 0


class NoEvents:
    def __init__(self, **kwargs):
        pass

    def add_scalar(self, *args):
        pass

    def close(self):
        pass


if mode == "metrics":
    torch.utils.tensorboard.SummaryWriter = NoEvents


def limit_file_size(size):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, batch):
        for i in range(extra):
            get_event_storage().put_scalar(f"extra/scalar_{i:03d}", float(i))
        x = torch.stack([record["x"] for record in batch])
        return {"loss_mse": self.linear(x).pow(2).mean()}


def loader(cfg, batch, seed):
    log = os.path.join(cfg.train.output_dir, "log.txt")
    if mode != "setup":
        limit_file_size(os.path.getsize(log) + (1500 if mode == "log" else 6000))
    records = [{"image_id": i, "width": 8, "height": 8, "x": torch.randn(3)} for i in range(8)]
    return ResumableTrainLoader(records, lambda record: record, batch, seed)


train_net._build_model = lambda cfg: Regression()
train_net.build_train_loader = loader
train_net.do_test = lambda cfg, model: {}
if mode == "setup":
    limit_file_size(8000)
sys.exit(train_net.run_cli(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "mode, path",
    [
        ("setup", "log.txt"),
        ("log", "log.txt"),
        ("metrics", "metrics.json"),
        ("events", "events.out.tfevents.*"),
    ],
)
def test_full_disk_for_the_log_or_metrics_gives_one_error_line(
    mode, path, shapes_datasets_root, tmp_path
):
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_datasets_root)
    out = tmp_path / "run"
    args = [f"train.output_dir={out}", "train.max_iter=60", "train.log_period=1"]
    args += ["train.checkpointer.period=100", "lr_multiplier.scheduler.milestones=[40,50]"]
    args += ["dataloader.train.total_batch_size=2", "train.eval_period=0"]
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, mode, "--config-file", os.path.join(REPO, DEMO)]
        + args,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, output
    assert len(errors) == 1, output
    written = re.fullmatch(r"error: \[Errno 27\] cannot write '(.*)': File too large", errors[0])
    assert written and fnmatch.fnmatch(written.group(1), str(out / path)), output
    assert "Traceback" not in output and "Logging error" not in output, output
    assert not (out / "model_final.pth").exists()


def test_divergence_names_the_last_good_checkpoint(shapes_datasets_root, tmp_path, capsys):
    argv = ["--config-file", os.path.join(REPO, DEMO)] + TINY
    argv += [
        f"train.output_dir={tmp_path}",
        "train.max_iter=6",
        "train.checkpointer.period=1",
        "optimizer.lr=1e4",
        "lr_multiplier.warmup_length=0",
        "lr_multiplier.scheduler.milestones=[4,5]",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(argv) == 1
    err = capsys.readouterr().err
    found = re.search(r"^error: .*diverged.* The last good checkpoint is (\S+):", err, re.M)
    assert found, err
    last = found.group(1)
    assert os.path.basename(last) == (tmp_path / "last_checkpoint").read_text()
    weights = torch.load(last, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_missing_config_file_lists_shipped_configs(capsys):
    assert run_cli(["--config-file", "configs/nope.py"]) == 2
    err = capsys.readouterr().err
    assert "configs/nope.py" in err and "mask_rcnn_mvitv2_b.py" in err


def test_shipped_config_by_name(shapes_datasets_root, tmp_path, monkeypatch):
    """--config-file takes a shipped config's name as well as a path (Detectron2's own setup
    logs the file, so the name must become the file before it)."""
    seen = []

    def no_evaluation(cfg, model):
        seen.append(cfg.train.output_dir)
        return {}

    monkeypatch.setattr(train_net, "do_test", no_evaluation)
    out = str(tmp_path / "out")
    argv = ["--config-file", "demo/mask_rcnn_mvitv2_shapes.py", "--eval-only"] + TINY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA: evaluation falls back to the CPU
        assert run_cli(argv + [f"train.output_dir={out}"]) == 0
    assert seen == [out]
    assert "Contents of args.config_file=" in open(os.path.join(out, "log.txt")).read()


def test_lazy_yaml_config_with_python_tags_is_refused_unless_trusted(
    shapes_datasets_root, tmp_path, monkeypatch, capsys
):
    """A LazyConfig YAML (as a training run saves it) that would run code while it is read stops
    the training tool with one error line; --trust-config reads it in full."""
    from detectron2.config import LazyConfig

    from mvit_det.model_zoo import get_config

    marker = tmp_path / "code_ran"
    config = tmp_path / "config.yaml"
    LazyConfig.save(get_config("demo/mask_rcnn_mvitv2_shapes.py"), str(config))
    with open(config, "a") as f:
        # exist_ok: the tool reads the config in the launcher and again in the training process
        f.write(f"extra: !!python/object/apply:os.makedirs [{str(marker)!r}, 511, true]\n")
    monkeypatch.setattr(train_net, "do_test", lambda cfg, model: {})
    argv = ["--config-file", str(config), "--eval-only"]
    overrides = TINY + [f"train.output_dir={tmp_path / 'out'}"]
    assert run_cli(argv + overrides) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"^error: .*!!python/object/apply:os.makedirs.*--trust-config", err, re.M | re.S
    )
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA: evaluation falls back to the CPU
        assert run_cli(argv + ["--trust-config"] + overrides) == 0
    assert marker.exists()
