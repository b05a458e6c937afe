"""The loading summary: classification checkpoints (official MViTv2, timm, MAE-style, published
ViL) loaded into a tiny Mask R-CNN by the checkpointer of training and the tools. What is
expected for such a file (the FPN and heads, the per-output norms, the classifier) is set apart
from what is surprising (a missing block tensor, other shapes, unknown tensors), in a table that
the log holds; Detectron2's own warnings remain for the surprising keys only.

The files are written here with each layout's names; the expected key sets are derived here from
the model's own state_dict names, not with the package's grouping."""

from __future__ import annotations

import argparse
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import torch
from detectron2.config import instantiate
from safetensors.torch import save_file

from mvit_det.checkpoint import BackboneCheckpointer, MissingBackboneKeysError
from mvit_det.model_zoo import get_config
from mvit_det.tools.loading import load_model

from helpers import REPO, TINY_MVIT
from test_vil_checkpoint import classification_state, vil_model, write_classification_file
from test_vil_checkpoint import detector as vil_detector

PREFIX = "backbone.bottom_up."
DEMO = str(REPO / "configs" / "demo" / "mask_rcnn_mvitv2_shapes.py")
# The tools' tiny demo model (tests/test_tools.py).
TOOL_TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
]
# Detectron2's warning about keys missing from a checkpoint.
D2_MISSING = "Some model parameters or buffers are not found in the checkpoint"
# A table row: flag, kind, count.
ROW = re.compile(r"^  (!!|  ) (missing|unused|shape)\s+(\d+)  ", re.M)


def mask_rcnn() -> torch.nn.Module:
    """The demo's Mask R-CNN with a 5-block MViT (all four stages, windows, global blocks)."""
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py").model
    cfg.backbone.bottom_up.update(**TINY_MVIT)
    torch.manual_seed(0)
    return instantiate(cfg)


def backbone_names(model: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    """The backbone's tensors without the prefix, with their shapes."""
    return {
        k[len(PREFIX) :]: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(PREFIX)
    }


def outside_backbone(model: torch.nn.Module) -> Set[str]:
    return {k for k in model.state_dict() if not k.startswith(PREFIX)}


def output_norms(model: torch.nn.Module) -> Set[str]:
    """The detection backbone's per-output norms, which ImageNet models do not have."""
    return {k for k in backbone_names(model) if re.match(r"scale\d_norm\.", k)}


def official_backbone(model: torch.nn.Module, seed: int = 1) -> Dict[str, torch.Tensor]:
    """A classification MViT's weights in the official flat layout, for the model's size: every
    backbone tensor but the per-output norms (random values), block 0's relative-position
    tables of another length (a classification model's), and the class token."""
    g = torch.Generator().manual_seed(seed)
    names = backbone_names(model)
    state = {
        k: torch.randn(shape, generator=g) * 0.02
        for k, shape in names.items()
        if k not in output_norms(model)
    }
    for axis in ("h", "w"):
        length, dim = names[f"blocks.0.attn.rel_pos_{axis}"]
        state[f"blocks.0.attn.rel_pos_{axis}"] = torch.randn(length + 6, dim, generator=g)
    state["cls_token"] = torch.randn(1, 1, names["patch_embed.proj.weight"][0], generator=g)
    return state


def classifier(model: torch.nn.Module, head: str) -> Dict[str, torch.Tensor]:
    """A final norm and a 1000-class head named ``head`` over the last stage's channels."""
    channels = backbone_names(model)["scale5_norm.weight"][0]
    return {
        "norm.weight": torch.ones(channels),
        "norm.bias": torch.zeros(channels),
        f"{head}.weight": torch.randn(1000, channels) * 0.01,
        f"{head}.bias": torch.zeros(1000),
    }


def timm_names(flat: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's staged names for flat block names: stages from TINY_MVIT's last_block_indexes,
    the skip projection ``proj`` as ``shortcut_proj_attn``."""
    last = TINY_MVIT["last_block_indexes"]
    staged = {}
    for key, value in flat.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            stage = next(s for s, end in enumerate(last) if i <= end)
            first = last[stage - 1] + 1 if stage else 0
            rest = re.sub(r"^proj\.", "shortcut_proj_attn.", rest)
            key = f"stages.{stage}.blocks.{i - first}.{rest}"
        staged[key] = value
    return staged


def write_official(path: Path, model: torch.nn.Module) -> Tuple[str, Dict[str, torch.Tensor]]:
    state = {**official_backbone(model), **classifier(model, "head.projection")}
    torch.save({"model_state": state, "epoch": 300}, path)
    return str(path), state


def write_timm(path: Path, model: torch.nn.Module) -> Tuple[str, Dict[str, torch.Tensor]]:
    state = official_backbone(model)
    del state["cls_token"]  # timm's mvitv2 has none
    state = timm_names({**state, **classifier(model, "head.fc")})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path), state


def write_mae_pretrained(path: Path, model: torch.nn.Module) -> Tuple[str, Dict[str, torch.Tensor]]:
    """MAE's layout: weights under ``model`` beside the run's ``args`` (a Namespace, which the
    safe reader leaves out); the encoder, its norm, the decoder and the mask token."""
    state = official_backbone(model)
    del state["cls_token"]
    state.update({k: v for k, v in classifier(model, "head").items() if k.startswith("norm.")})
    state.update(
        {
            "mask_token": torch.zeros(1, 1, 8),
            "decoder_embed.weight": torch.randn(8, 128),
            "decoder_blocks.0.mlp.fc1.weight": torch.randn(32, 8),
            "decoder_norm.weight": torch.ones(8),
            "decoder_pred.weight": torch.randn(48, 8),
        }
    )
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(mask_ratio=0.75)}, path)
    return str(path), state


def write_mae_finetuned(path: Path, model: torch.nn.Module) -> Tuple[str, Dict[str, torch.Tensor]]:
    """MAE's fine-tuned layout: global pooling with ``fc_norm`` and a ``head``."""
    state = official_backbone(model)
    del state["cls_token"]
    head = classifier(model, "head")
    state.update({k.replace("norm.", "fc_norm."): v for k, v in head.items() if "norm." in k})
    state.update({k: v for k, v in head.items() if k.startswith("head.")})
    torch.save({"model": state, "epoch": 99}, path)
    return str(path), state


@contextmanager
def checkpointer_log() -> Iterator[List[logging.LogRecord]]:
    """The records of the checkpointer's logger at every level (Detectron2's setup_logger stops
    it from propagating to pytest's capture in a session that trained before)."""
    records: List[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("fvcore.common.checkpoint")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def text_at(records: List[logging.LogRecord], level: int) -> str:
    return "\n".join(r.getMessage() for r in records if r.levelno == level)


def table_counts(text: str) -> Dict[Tuple[str, str], int]:
    """(flag, kind) -> the sum of the counts of the table's rows in a log text."""
    counts: Dict[Tuple[str, str], int] = {}
    for flag, kind, count in ROW.findall(text):
        key = (flag.strip(), kind)
        counts[key] = counts.get(key, 0) + int(count)
    return counts


LAYOUTS = {
    "official": (write_official, "MViTv2_T_in1k.pyth"),
    "timm": (write_timm, "model.safetensors"),
    "mae_pretrained": (write_mae_pretrained, "mae_pretrain.pth"),
    "mae_finetuned": (write_mae_finetuned, "mae_finetuned.pth"),
}
# The file's tensors that a detector has no use for, by layout (checkpoint names).
CLASSIFIER_ONLY = {
    "official": {"cls_token", "norm.weight", "norm.bias"}
    | {"head.projection.weight", "head.projection.bias"},
    "timm": {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"},
    "mae_pretrained": {"norm.weight", "norm.bias", "mask_token", "decoder_embed.weight"}
    | {"decoder_blocks.0.mlp.fc1.weight", "decoder_norm.weight", "decoder_pred.weight"},
    "mae_finetuned": {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_classification_files_load_with_only_expected_gaps(tmp_path: Path, layout: str) -> None:
    write, name = LAYOUTS[layout]
    model = mask_rcnn()
    path, state = write(tmp_path / name, model)
    checkpointer = BackboneCheckpointer(model)
    with checkpointer_log() as records:
        checkpointer.load(path)
    summary = checkpointer.last_summary

    expected_missing = outside_backbone(model) | {PREFIX + k for k in output_norms(model)}
    assert summary.keys(surprising=False, kind="missing") == expected_missing
    assert summary.keys(surprising=False, kind="unused") == CLASSIFIER_ONLY[layout]
    assert summary.keys(surprising=True) == set() and not summary.surprising
    assert summary.total == len(model.state_dict())
    assert summary.loaded == len(model.state_dict()) - len(expected_missing)
    assert summary.resized == 2  # block 0's tables
    # the loading is real: the block tensors hold the file's values
    loaded = model.state_dict()
    proj = (
        "blocks.1.proj.weight"
        if layout != "timm"
        else "stages.1.blocks.0.shortcut_proj_attn.weight"
    )
    assert torch.equal(loaded[PREFIX + "blocks.1.proj.weight"], state[proj])

    info, warning = text_at(records, logging.INFO), text_at(records, logging.WARNING)
    assert summary.format() in info
    assert "nothing surprising" in info and "SURPRISING" not in info + warning
    # Detectron2's own list of the missing FPN and heads: at debug level only
    assert D2_MISSING not in warning
    assert D2_MISSING in text_at(records, logging.DEBUG)
    assert "backbone.fpn_lateral2" in text_at(records, logging.DEBUG)
    # the table: one row per group, surprising ones none, counts that add up
    assert table_counts(info) == {
        ("", "missing"): len(expected_missing),
        ("", "unused"): len(CLASSIFIER_ONLY[layout]),
    }
    assert "scale{2-5}_norm.{weight,bias}" in info  # prefixes collapsed


def test_published_vil_classification_file(tmp_path: Path) -> None:
    state = classification_state(vil_model())
    path = write_classification_file(tmp_path / "model_best.pth", state)
    model = vil_detector()
    checkpointer = BackboneCheckpointer(model)
    with checkpointer_log() as records:
        checkpointer.load(path)
    summary = checkpointer.last_summary

    # The published layout's classification-only tensors: the classifier, the aliases of the
    # shared global projections and the index buffers (the model recomputes them).
    names = [k[len("module.") :] for k in state]
    unused = {
        k
        for k in names
        if k.startswith(("head.", "norm."))
        or "_global." in k
        or k.endswith("relative_position_index")
    }
    assert summary.keys(surprising=False, kind="unused") == unused
    assert summary.keys(surprising=False, kind="missing") == outside_backbone(model)
    assert summary.keys(surprising=True) == set()
    assert summary.loaded == len(model.state_dict()) - len(outside_backbone(model))
    info = text_at(records, logging.INFO)
    assert "nothing surprising" in info
    assert D2_MISSING not in text_at(records, logging.WARNING)
    assert table_counts(info) == {
        ("", "missing"): len(outside_backbone(model)),
        ("", "unused"): len(unused),
    }


def test_a_missing_block_tensor_is_surprising(tmp_path: Path) -> None:
    model = mask_rcnn()
    _, state = write_official(tmp_path / "full.pyth", model)
    del state["blocks.3.attn.proj.weight"]
    path = tmp_path / "damaged.pyth"
    torch.save({"model_state": state}, path)

    # refused by default, with the table in the log
    with checkpointer_log() as records, pytest.raises(MissingBackboneKeysError):
        BackboneCheckpointer(mask_rcnn()).load(str(path))
    warning = text_at(records, logging.WARNING)
    assert "!! SURPRISING: 1 tensor in 1 group;" in warning
    assert PREFIX + "blocks.3.attn.proj.weight" in warning

    checkpointer = BackboneCheckpointer(model, allow_missing_backbone_keys=True)
    with checkpointer_log() as records:
        checkpointer.load(str(path))
    summary = checkpointer.last_summary
    assert summary.keys(surprising=True) == {PREFIX + "blocks.3.attn.proj.weight"}
    assert summary.keys(surprising=True, kind="missing") == {PREFIX + "blocks.3.attn.proj.weight"}
    assert summary.keys(surprising=False, kind="missing") == outside_backbone(model) | {
        PREFIX + k for k in output_norms(model)
    }
    warning = text_at(records, logging.WARNING)
    assert summary.format() in warning
    assert table_counts(warning)[("!!", "missing")] == 1
    # the surprising row comes first
    rows = ROW.findall(warning)
    assert rows[0] == ("!!", "missing", "1") and all(flag.strip() == "" for flag, _, _ in rows[1:])
    # Detectron2's warning names the block tensor, not the FPN and heads
    loud = [
        r.getMessage()
        for r in records
        if r.levelno == logging.WARNING and D2_MISSING in r.getMessage()
    ]
    assert len(loud) == 1 and "blocks.3.attn.proj.weight" in loud[0] and "fpn" not in loud[0]


def test_other_shapes_and_unknown_tensors_are_surprising(tmp_path: Path) -> None:
    """A Detectron2 file of the whole detector, trained with 80 classes, with one tensor of
    another model, the classifier of its ImageNet backbone and the anchors of older files."""
    model = mask_rcnn()
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    channels = state["roi_heads.box_predictor.cls_score.weight"].shape[1]
    state["roi_heads.box_predictor.cls_score.weight"] = torch.randn(81, channels)
    state["roi_heads.box_predictor.cls_score.bias"] = torch.randn(81)
    state["roi_heads.keypoint_head.conv1.weight"] = torch.randn(4, 4, 3, 3)
    state[PREFIX + "head.projection.weight"] = torch.randn(1000, 128)
    # as older Detectron2 files hold them (the model recomputes its anchors)
    state["proposal_generator.anchor_generator.cell_anchors.0"] = torch.randn(3, 4)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    checkpointer = BackboneCheckpointer(model)
    with checkpointer_log() as records:
        checkpointer.load(str(path))
    summary = checkpointer.last_summary

    reshaped = {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    }
    assert summary.keys(surprising=True, kind="shape") == reshaped
    assert summary.keys(surprising=True, kind="unused") == {"roi_heads.keypoint_head.conv1.weight"}
    assert summary.keys(surprising=True, kind="missing") == set()
    assert summary.keys(surprising=False) == {
        PREFIX + "head.projection.weight",
        "proposal_generator.anchor_generator.cell_anchors.0",
    }
    assert summary.loaded == len(model.state_dict()) - 2
    (shape_group,) = [g for g in summary.surprising if g.kind == "shape"]
    shapes = dict(zip(shape_group.keys, shape_group.shapes))
    assert shapes["roi_heads.box_predictor.cls_score.bias"] == (
        (81,),
        (model.roi_heads.num_classes + 1,),
    )
    warning = text_at(records, logging.WARNING)
    assert summary.format() in warning
    assert table_counts(warning) == {("!!", "shape"): 2, ("!!", "unused"): 1, ("", "unused"): 2}
    assert "Skip loading parameter 'roi_heads.box_predictor.cls_score.bias'" in warning


def test_tools_print_the_summary(
    shapes_datasets_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tools print the summary once: on stdout, not also through the log (which a tool
    without logging set up would show again on stderr)."""
    target = load_model(DEMO, opts=TOOL_TINY).model
    path, _ = write_official(tmp_path / "MViTv2_T_in1k.pyth", target)
    capsys.readouterr()
    caplog.set_level(logging.DEBUG)
    loaded = load_model(DEMO, weights=path, opts=TOOL_TINY)
    out = capsys.readouterr().out
    assert loaded.loading is not None and out.count(loaded.loading.format()) == 1
    assert not [r for r in caplog.records if loaded.loading.format() in r.getMessage()]
    assert "nothing surprising" in out
    assert loaded.loading.keys(surprising=False, kind="missing") == outside_backbone(target) | {
        PREFIX + k for k in output_norms(target)
    }
