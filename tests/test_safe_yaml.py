"""YAML configs are read without building Python objects from them (mvit_det.config.safe_yaml):
Detectron2's own readers run ``!!python/...`` tags, ours refuse them unless trusted, and still
read every YAML the shipped configs are saved as."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch.nn as nn
from detectron2.config import LazyConfig, get_cfg
from detectron2.layers import ShapeSpec

import mvit_det  # noqa: F401  (MODEL.MVIT / MODEL.VIL keys)
from mvit_det.config.safe_yaml import (
    UnsafeConfigError,
    load_lazy_config,
    merge_yacs_file,
    read_lazy_yaml,
    yaml_config_kind,
)
from mvit_det.model_zoo import get_config

from helpers import REPO

YACS = REPO / "configs" / "yacs"


def _saved(tmp_path: Path, name: str) -> Path:
    """A shipped LazyConfig as ``LazyConfig.save`` writes it (what a training run saves)."""
    path = tmp_path / (name.replace("/", "_") + ".yaml")
    LazyConfig.save(get_config(name), str(path))
    return path


@pytest.mark.parametrize(
    "name",
    [
        "demo/mask_rcnn_mvitv2_shapes.py",  # partial(LayerNorm, eps=1e-6), ShapeSpec, tuples
        "cascade_mask_rcnn_mvitv2_t.py",  # partial(NaiveSyncBatchNorm, ...) in the heads
        "retinanet_mvitv2_b_sfp.py",  # SimpleFeaturePyramid
        "projects/ViL/configs/COCO/retinanet_vil_s_3x.py",  # lists of ShapeSpec
    ],
)
def test_saved_lazy_configs_read_safely_as_in_full(tmp_path: Path, name: str) -> None:
    path = _saved(tmp_path, name)
    text = path.read_text()
    assert "!!python/" in text  # Detectron2 writes Python tags for these configs
    safe, full = read_lazy_yaml(str(path)), LazyConfig.load(str(path))
    assert repr(safe) == repr(full)  # the same values, the same objects (partial, ShapeSpec)
    assert load_lazy_config(str(path)) is not None and yaml_config_kind(str(path)) == "lazy"


def test_every_shipped_yacs_yaml_reads_safely() -> None:
    for path in sorted(YACS.glob("**/*.yaml")):
        if path.name.startswith("Base-"):
            continue
        cfg = merge_yacs_file(get_cfg(), str(path))
        assert (
            cfg.MODEL.BACKBONE.NAME.startswith("build_") and yaml_config_kind(str(path)) == "yacs"
        )


MARKER = "code_ran"
REFUSED = [
    # (YAML value on line 3, what the message names, the line of the refused tag)
    ("!!python/object/apply:os.makedirs [{marker}]", "!!python/object/apply:os.makedirs", 3),
    ("!!python/object/new:os.makedirs [{marker}]", "!!python/object/new:os.makedirs", 3),
    ("!!python/name:os.system ''", "!!python/name:os.system", 3),
    ("!!python/module:os ''", "!!python/module:os", 3),
    ("!!python/object:os.PathLike {{}}", "!!python/object:os.PathLike", 3),
    ("!!python/name:subprocess.Popen ''", "!!python/name:subprocess.Popen", 3),
    (
        "!!python/object/apply:functools.partial\n    args: [!!python/name:os.makedirs '']\n"
        "    state: !!python/tuple [!!python/name:os.makedirs '', !!python/tuple [{marker}], {{}}"
        ", null]",
        "!!python/name:os.makedirs",
        4,
    ),
    (
        "!!python/object/apply:functools.partial\n    args: [!!python/name:torch.nn.LayerNorm '']\n"
        "    state: !!python/tuple [!!python/name:torch.nn.LayerNorm '', !!python/tuple [], "
        "{{eps: !!python/object/apply:os.makedirs [{marker}]}}, null]",
        "!!python/object/apply:os.makedirs",
        5,
    ),
    (
        "!!python/object:detectron2.layers.shape_spec.ShapeSpec {{channels: '256'}}",
        "ShapeSpec",
        3,
    ),
    # a partial whose state names another callable than its arguments
    (
        "!!python/object/apply:functools.partial\n    args: [!!python/name:torch.nn.LayerNorm '']\n"
        "    state: !!python/tuple [!!python/name:torch.nn.GELU '', !!python/tuple [], {{}}, null]",
        "!!python/object/apply:functools.partial",
        3,
    ),
    # a function of an allowed package: only module classes may be named
    ("!!python/name:detectron2.modeling.build_model ''", "detectron2.modeling.build_model", 3),
]


@pytest.mark.parametrize("value, named, line", REFUSED)
def test_lazy_yaml_python_tags_are_refused_without_running_code(
    tmp_path: Path, value: str, named: str, line: int
) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  x: 1\n  norm: " + value.format(marker=repr(str(marker))) + "\n")
    with pytest.raises(UnsafeConfigError) as info:
        load_lazy_config(str(path))
    message = str(info.value)
    assert named in message and f"line {line} " in message and "--trust-config" in message
    assert not marker.exists()
    assert yaml_config_kind(str(path)) == "lazy"  # telling the kinds apart builds nothing
    assert not marker.exists()


def test_lazy_yaml_allowed_objects_are_built_as_detectron2_does(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model:\n"
        "  size: !!python/tuple [1, 2]\n"
        "  shape: !!python/object:detectron2.layers.shape_spec.ShapeSpec {channels: 8, stride: 4}\n"
        "  norm: !!python/object/apply:functools.partial\n"
        "    args: [&n !!python/name:torch.nn.modules.normalization.LayerNorm '']\n"
        "    state: !!python/tuple [*n, !!python/tuple [], {eps: 1.0e-06}, null]\n"
    )
    model = read_lazy_yaml(str(path)).model
    assert tuple(model.size) == (1, 2)
    assert model.shape == ShapeSpec(channels=8, stride=4)
    assert isinstance(model.norm, functools.partial) and model.norm.func is nn.LayerNorm
    assert model.norm.keywords == {"eps": 1e-6} and model.norm.args == ()


def test_trust_reads_lazy_yaml_in_full(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  x: !!python/object/apply:os.makedirs [{str(marker)!r}]\n")
    load_lazy_config(str(path), trust=True)
    assert marker.is_dir()  # what Detectron2's LazyConfig.load does with every YAML


def test_yacs_python_tags_are_refused_in_the_file_and_its_bases(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    tag = f"!!python/object/apply:os.makedirs [{str(marker)!r}]"
    base = tmp_path / "base.yaml"
    base.write_text(f"_BASE_: {YACS / 'mask_rcnn_mvitv2_t.yaml'}\nMODEL:\n  DEVICE: {tag}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nMODEL:\n  MASK_ON: True\n")
    for path in (base, child):
        with pytest.raises(UnsafeConfigError) as info:
            merge_yacs_file(get_cfg(), str(path))
        message = str(info.value)
        assert f"{base} line 3" in message and "!!python/object/apply:os.makedirs" in message
        assert "--trust-config" in message and not marker.exists()
    # Detectron2's own default, allow_unsafe=True, runs the tag: what the safe reading prevents.
    get_cfg().merge_from_file(str(child))
    assert marker.is_dir()
    os.rmdir(marker)
    merge_yacs_file(get_cfg(), str(child), trust=True)  # trusted: read in full
    assert marker.is_dir()


def test_names_outside_the_allowed_packages_are_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing a module runs its code: a name of another package is refused unimported."""
    marker = tmp_path / MARKER
    (tmp_path / "module_with_side_effect.py").write_text(
        f"import os\nos.makedirs({str(marker)!r})\nimport torch.nn\nLinear = torch.nn.Linear\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  norm: !!python/name:module_with_side_effect.Linear ''\n")
    with pytest.raises(UnsafeConfigError, match="module_with_side_effect.Linear"):
        read_lazy_yaml(str(path))
    assert not marker.exists()
