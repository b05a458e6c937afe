"""The shipped detection configs have exactly the parameters of the published recipes, so that the
published Detectron2 COCO checkpoints (``model_final_*.pkl``) load with nothing missing or left
over.

The expected key sets are built from the recipe, not from our configs: Detectron2's own
``common/models/mask_rcnn_fpn.py`` with an MViT of the size (the published Mask R-CNN MViTv2
models: one RPN conv, 2-fc box head, 4-conv mask head), and for Cascade Mask R-CNN the cascade
heads written out below from the recipe (two RPN convs, three 4conv+1fc box heads with BatchNorm,
class-agnostic predictors, a mask head with BatchNorm).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from mvit_det import MViT, mvit_preset
from mvit_det.checkpoint import MViTCheckpointer
from mvit_det.model_zoo import get_config

pytestmark = pytest.mark.numerics

Shapes = Dict[str, Tuple[int, ...]]
SIZES = ["t", "s", "b", "l", "h"]
NUM_CLASSES = 80
# BatchNorm state of a 256-channel conv.
BN_256 = {"weight": (256,), "bias": (256,), "running_mean": (256,), "running_var": (256,)}
BN_256["num_batches_tracked"] = ()


def shapes_of(model_cfg) -> Shapes:
    with torch.device("meta"):
        model = instantiate(model_cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def recipe_mask_rcnn(size: str) -> Shapes:
    """Detectron2's Mask R-CNN FPN model with an MViT of ``size``, as the published models."""
    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    cfg.backbone.bottom_up = L(MViT)(**mvit_preset(size.upper()))
    cfg.backbone.in_features = ("scale2", "scale3", "scale4", "scale5")
    return shapes_of(cfg)


def recipe_cascade(size: str) -> Shapes:
    """The Mask R-CNN recipe with the heads of the published Cascade Mask R-CNN MViTv2 models."""
    keys = {
        k: v
        for k, v in recipe_mask_rcnn(size).items()
        if not k.startswith(
            (
                "roi_heads.box_head.",
                "roi_heads.box_predictor.",
                "roi_heads.mask_head.mask_fcn",
                "proposal_generator.rpn_head.conv.",
            )
        )
    }
    for k in range(2):  # two 3x3 convs in the RPN head
        keys[f"proposal_generator.rpn_head.conv.conv{k}.weight"] = (256, 256, 3, 3)
        keys[f"proposal_generator.rpn_head.conv.conv{k}.bias"] = (256,)
    for stage in range(3):
        head, predictor = f"roi_heads.box_head.{stage}.", f"roi_heads.box_predictor.{stage}."
        for k in range(1, 5):  # 4 convs with BatchNorm (no conv bias), then one fc
            keys[f"{head}conv{k}.weight"] = (256, 256, 3, 3)
            keys.update({f"{head}conv{k}.norm.{n}": s for n, s in BN_256.items()})
        keys[f"{head}fc1.weight"], keys[f"{head}fc1.bias"] = (1024, 256 * 7 * 7), (1024,)
        keys[f"{predictor}cls_score.weight"] = (NUM_CLASSES + 1, 1024)
        keys[f"{predictor}cls_score.bias"] = (NUM_CLASSES + 1,)
        keys[f"{predictor}bbox_pred.weight"], keys[f"{predictor}bbox_pred.bias"] = (4, 1024), (4,)
    for k in range(1, 5):  # mask head convs with BatchNorm
        keys[f"roi_heads.mask_head.mask_fcn{k}.weight"] = (256, 256, 3, 3)
        keys.update({f"roi_heads.mask_head.mask_fcn{k}.norm.{n}": s for n, s in BN_256.items()})
    return keys


def recipe(method: str, size: str) -> Shapes:
    return recipe_mask_rcnn(size) if method == "mask_rcnn" else recipe_cascade(size)


def assert_same_shapes(actual: Shapes, expected: Shapes) -> None:
    missing, extra = sorted(expected.keys() - actual), sorted(actual.keys() - expected)
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not wrong, wrong


@pytest.mark.parametrize("method", ["mask_rcnn", "cascade_mask_rcnn"])
@pytest.mark.parametrize("size", SIZES)
def test_shipped_config_has_the_published_parameters(method: str, size: str) -> None:
    shipped = shapes_of(get_config(f"{method}_mvitv2_{size}.py").model)
    assert_same_shapes(shipped, recipe(method, size))


def test_rpn_convs_one_for_mask_rcnn_two_for_cascade() -> None:
    """The difference that decides whether published files load (0.59 M parameters)."""
    mask = shapes_of(get_config("mask_rcnn_mvitv2_t.py").model)
    cascade = shapes_of(get_config("cascade_mask_rcnn_mvitv2_t.py").model)
    assert [k for k in mask if k.startswith("proposal_generator.rpn_head.conv")] == [
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.conv.bias",
    ]
    assert len([k for k in cascade if k.startswith("proposal_generator.rpn_head.conv")]) == 4


def write_published_pkl(path: Path, shapes: Shapes) -> Dict[str, np.ndarray]:
    """A model-zoo .pkl with exactly ``shapes``: numpy arrays under "model", random values."""
    rng = np.random.default_rng(0)
    model = {
        k: (
            rng.integers(0, 100, s) if k.endswith("num_batches_tracked") else rng.standard_normal(s)
        ).astype(np.int64 if k.endswith("num_batches_tracked") else np.float32)
        for k, s in shapes.items()
    }
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f)
    return model


@pytest.mark.parametrize("method", ["mask_rcnn", "cascade_mask_rcnn"])
def test_published_key_set_loads_with_nothing_missing_or_unused(
    method: str, tmp_path: Path
) -> None:
    weights = write_published_pkl(tmp_path / "model_final.pkl", recipe(method, "t"))
    model = instantiate(get_config(f"{method}_mvitv2_t.py").model)
    checkpointer = MViTCheckpointer(model)
    checkpointer.load(str(tmp_path / "model_final.pkl"))
    report = checkpointer.last_report
    assert report.missing == [] and report.new == [] and report.dropped == []
    state = model.state_dict()
    assert state.keys() == weights.keys()  # nothing unused in the file, nothing left unloaded
    for key, value in weights.items():
        assert torch.equal(state[key].cpu(), torch.from_numpy(value)), key
