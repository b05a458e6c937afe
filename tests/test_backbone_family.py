"""A third backbone family is one registration: a stand-in family, defined in this file alone, is
built from yacs and LazyConfig, its weights are converted and loaded, it is benchmarked and
exported, and its layer-wise LR decay works, without any tool knowing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.config import defaults as detectron2_defaults
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone

from mvit_det.checkpoint import BackboneCheckpointer
from mvit_det.checkpoint.mapping import LoadReport, split_backbone
from mvit_det.modeling.backbones import (
    AttentionCores,
    BackboneFamily,
    WeightOption,
    register_family,
    unregister_family,
)
from mvit_det.tools import benchmark, convert_checkpoint, export

from helpers import REPO

NAME = "tinyfam"
BUILDER = "build_tinyfam_fpn_backbone"
SIZES = {"tiny_s": dict(dim=4), "tiny_m": dict(dim=8)}
SCALES = ("scale2", "scale3", "scale4", "scale5")


def tiny_preset(size: str, **overrides: Any) -> Dict[str, Any]:
    if size.lower() not in SIZES:
        raise ValueError(f"unknown size {size!r}")
    return {**SIZES[size.lower()], **overrides}


def check_tiny_args(*, dim: int, attn_impl: str, out_features: Sequence[str]) -> None:
    if dim < 1:
        raise ValueError(f"dim={dim} must be >= 1")
    TINY_CORES.check(attn_impl)
    if not set(out_features) <= set(SCALES):
        raise ValueError(f"out_features={tuple(out_features)} must be a subset of {SCALES}")


# Two "attention cores" with one signature, and the rule for "auto".
TINY_CORES = AttentionCores(
    cores={"identity": lambda x: x, "relu": torch.relu}, auto=lambda: "relu"
)


class TinyNet(Backbone):
    """A stem of stride 4 and three stride-2 convs, each followed by the family's core."""

    def __init__(
        self,
        in_chans: int = 3,
        dim: int = 4,
        attn_impl: str = "auto",
        out_features: Sequence[str] = SCALES,
    ) -> None:
        super().__init__()
        check_tiny_args(dim=dim, attn_impl=attn_impl, out_features=out_features)
        self.stem = nn.Conv2d(in_chans, dim, 4, 4)
        self.stages = nn.ModuleList(nn.Conv2d(dim, dim, 3, 2, 1) for _ in range(3))
        self.attn_impl = attn_impl
        self._out_features = list(out_features)
        self._out_feature_channels = {name: dim for name in out_features}
        self._out_feature_strides = {name: 2 ** int(name[-1]) for name in out_features}

    @property
    def num_layers(self) -> int:
        return 4

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        core = TINY_CORES.pick(self.attn_impl)
        x = core(self.stem(x))
        outputs = {"scale2": x}
        for i, stage in enumerate(self.stages, start=3):
            x = core(stage(x))
            outputs[f"scale{i}"] = x
        return {name: outputs[name] for name in self._out_features}


def adapt_tiny(
    state: Mapping[str, torch.Tensor],
    backbone_state: Mapping[str, torch.Tensor],
    prefix: str,
    source: str = "checkpoint",
    target: str = "TinyNet",
    gain: str = "1",
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """The family's published layout: ``patch.*`` is the stem, ``body.{i}.*`` the stages."""
    _, inside, out = split_backbone(state, "patch.weight", "TinyNet", source)
    report = LoadReport(source, "tiny (patch/body)", target, passed_on=len(out))
    for key, value in inside.items():
        name = "stem." + key[6:] if key.startswith("patch.") else "stages." + key[5:]
        out[prefix + name] = value * float(gain)
        report.loaded.append(prefix + name)
    report.missing = [prefix + k for k in backbone_state if prefix + k not in out]
    return out, report


class TinyLayers:
    """Layer-wise LR decay rule: the stem is layer 0, stage i layer i + 1 (of 3)."""

    def __init__(self, stages: int = 3) -> None:
        self.num_layers = stages

    def layer_id(self, name: str) -> int:
        if name.startswith("stem."):
            return 0
        if name.startswith("stages."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


FAMILY = BackboneFamily(
    name=NAME,
    title="TinyNet",
    backbone=TinyNet,
    presets=SIZES,
    preset=tiny_preset,
    size_names=tuple(SIZES),
    check_args=check_tiny_args,
    attention=TINY_CORES,
    adapt_weights=adapt_tiny,
    yacs_node="TINYFAM",
    yacs_default_size="tiny_s",
    yacs_builders={BUILDER: "fpn"},
    weight_options=(
        WeightOption("--tiny-gain", "gain", "1", ("1", "2"), "scale the TinyNet weights"),
    ),
    layer_rule=TinyLayers,
)


@pytest.fixture(scope="module")
def family():
    register_family(FAMILY)
    yield FAMILY
    unregister_family(NAME)
    # What registering installed into Detectron2 (see mvit_det.install).
    detectron2_defaults._C.MODEL.pop("TINYFAM", None)
    BACKBONE_REGISTRY._obj_map.pop(BUILDER, None)


@pytest.fixture(scope="module")
def config_file(family, tmp_path_factory) -> Path:
    """A LazyConfig of the shapes demo detector with a TinyNet as its backbone."""
    path = tmp_path_factory.mktemp("tiny") / "mask_rcnn_tiny.py"
    path.write_text(f"""
from detectron2.config import LazyCall as L
from mvit_det.model_zoo import get_config
from mvit_det.solver import LayerDecay
from {__name__} import TinyNet

_base = get_config("demo/mask_rcnn_mvitv2_shapes.py")
dataloader, train, lr_multiplier = _base.dataloader, _base.train, _base.lr_multiplier
optimizer, model = _base.optimizer, _base.model
model.backbone.bottom_up = L(TinyNet)(dim=8, out_features={SCALES!r})
optimizer.params.lr_factor_func = L(LayerDecay)(family="{NAME}", decay_rate=0.5)
""")
    return path


def published_weights(path: Path, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random TinyNet weights (dim 8) in the family's published layout, saved to ``path``."""
    g = torch.Generator().manual_seed(seed)
    state = {"patch.weight": torch.randn(8, 3, 4, 4, generator=g), "patch.bias": torch.randn(8)}
    for i in range(3):
        state[f"body.{i}.weight"] = torch.randn(8, 8, 3, 3, generator=g)
        state[f"body.{i}.bias"] = torch.randn(8, generator=g)
    torch.save(state, path)
    return state


def test_yacs_keys_and_builder(family):
    cfg = get_cfg()
    assert cfg.MODEL.TINYFAM.DIM == 4  # the default size, tiny_s
    assert cfg.MODEL.TINYFAM.ATTN_IMPL == "auto"
    cfg.MODEL.BACKBONE.NAME = BUILDER
    cfg.MODEL.TINYFAM.DIM = 6
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, TinyNet)
    assert backbone.bottom_up.stem.out_channels == 6
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{i}": (1, 16, -(-64 // 2**i), -(-96 // 2**i)) for i in range(2, 7)
    }


def test_lazy_config_builds_and_decays_layers(config_file):
    cfg = LazyConfig.load(str(config_file))
    model = instantiate(cfg.model)
    assert isinstance(model.backbone.bottom_up, TinyNet)
    decay = instantiate(cfg.optimizer.params.lr_factor_func)
    assert decay("backbone.bottom_up.stem.weight") == 0.5**4
    assert decay("backbone.bottom_up.stages.2.bias") == 0.5
    assert decay("roi_heads.box_predictor.cls_score.weight") == 1.0


def test_weights_convert_and_load(config_file, tmp_path, capsys):
    source = tmp_path / "tiny_published.pth"
    state = published_weights(source)
    out = tmp_path / "converted.pth"
    argv = [str(source), str(out), "--model", "tiny_m", "--tiny-gain", "2"]
    assert convert_checkpoint.main(argv) == 0
    assert "layout: tiny (patch/body)" in capsys.readouterr().out
    converted = torch.load(out)["model"]
    assert set(converted) == {
        "backbone.bottom_up.stem.weight",
        "backbone.bottom_up.stem.bias",
    } | {f"backbone.bottom_up.stages.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert torch.equal(converted["backbone.bottom_up.stages.1.weight"], 2 * state["body.1.weight"])
    # the detector of a config as the target, and the checkpointer, read the same layout
    assert (
        convert_checkpoint.main(
            [str(source), str(tmp_path / "c2.pth"), "--model", str(config_file)]
        )
        == 0
    )
    model = instantiate(LazyConfig.load(str(config_file)).model)
    BackboneCheckpointer(model).load(str(source))
    assert torch.equal(model.backbone.bottom_up.stem.weight.detach(), state["patch.weight"])
    assert torch.equal(model.backbone.bottom_up.stages[2].bias.detach(), state["body.2.bias"])


def test_benchmark_compares_its_cores(config_file, tmp_path):
    args = benchmark.parse_args(
        ["--config", str(config_file), "--device", "cpu", "--dtype", "fp32", "--batch", "1"]
        + ["--tasks", "backbone", "--image-size", "64", "--iters", "1", "--warmup", "1"]
        + ["--compare-attn-impls", "identity,relu", "--output", str(tmp_path / "b.json")]
    )
    report = benchmark.run_benchmark(args)
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"identity", "relu"} and all(r["ms"] > 0 for r in rows.values())
    assert report["gflops_backbone_fpn"]["relu"] > 0
    with pytest.raises(ValueError, match="'dense' exists for ViL backbones only"):
        benchmark.build_models(
            benchmark.parse_args(["--config", str(config_file), "--attn-impl", "dense"])
        )


def test_export_of_the_backbone_alone(config_file, tmp_path):
    common = ["--config", str(config_file), "--format", "torchscript", "--device", "cpu"]
    common += ["--image-size", "64x96"]
    for what in ("trunk", NAME):
        out = tmp_path / what
        assert export.main(common + ["--what", what, "--output", str(out)]) == 0
        report = json.loads((out / "export.json").read_text())
        assert report["outputs"] == list(SCALES) and report["file"].endswith(f"{what}.ts")
        assert max(report["max_relative_difference"]) < 1e-6
        traced = torch.jit.load(report["file"])
        assert [tuple(t.shape) for t in traced(torch.randn(1, 3, 64, 96))] == [
            (1, 8, 64 // 2**i, 96 // 2**i) for i in range(2, 6)
        ]
    # not a family that scripts, and not an MViT
    assert (
        export.main(common + ["--what", "trunk", "--script", "--output", str(tmp_path / "s")]) == 2
    )
    assert export.main(common + ["--what", "mvit", "--output", str(tmp_path / "m")]) == 2


def test_the_package_never_imports_detectron2s_mvit():
    """mvit_det works on Detectron2 builds without ``detectron2.modeling.backbone.mvit``: no
    module of the package imports it (the MViT family only names it as a string, which the
    benchmark compares with the class its thin command-line script hands in)."""
    import ast

    banned = "detectron2.modeling.backbone.mvit"
    offenders = []
    for path in sorted((REPO / "mvit_det").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                "import_module",
                "__import__",
            ):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if any(str(n).startswith(banned) for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders
