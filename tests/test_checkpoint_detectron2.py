"""Published Detectron2 COCO checkpoints: a whole Mask R-CNN MViTv2-T round trip through .pkl."""

from __future__ import annotations

import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn as nn
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.structures import Instances

from mvit_det import MViT, mvit_preset
from mvit_det.checkpoint import MViTCheckpointer
from mvit_det.tools import convert_checkpoint as convert_tool

from helpers import REPO

pytestmark = pytest.mark.numerics


def build_mask_rcnn_t(seed: int) -> nn.Module:
    """Detectron2's common Mask R-CNN FPN with an MViTv2-T bottom-up, randomly initialised."""
    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    cfg.backbone.bottom_up = L(MViT)(
        **mvit_preset("T"),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        out_features=("scale2", "scale3", "scale4", "scale5"),
    )
    cfg.backbone.in_features = "${.bottom_up.out_features}"
    cfg.input_format = "RGB"
    # Random heads score every class about 1/81: keep all detections so there is much to compare.
    cfg.roi_heads.box_predictor.test_score_thresh = 0.0
    torch.manual_seed(seed)
    return instantiate(cfg).eval()


def predict(model: nn.Module) -> Instances:
    image = torch.randint(0, 256, (3, 128, 192), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model([{"image": image.float(), "height": 128, "width": 192}])[0]["instances"]


def assert_same_predictions(a: Instances, b: Instances) -> None:
    assert len(a) == len(b) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        x, y = a.get(field), b.get(field)
        x, y = (x.tensor, y.tensor) if field == "pred_boxes" else (x, y)
        assert torch.equal(x, y), field


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    """A model_final_*.pkl as Detectron2 publishes them, and the predictions of its model."""
    model = build_mask_rcnn_t(seed=0)
    path = tmp_path_factory.mktemp("zoo") / "model_final_mvitv2_t.pkl"
    data = {
        "model": {k: v.numpy() for k, v in model.state_dict().items()},
        "__author__": "Detectron2 Model Zoo",
    }
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path, predict(model)


def test_pkl_loads_with_identical_predictions(published) -> None:
    path, expected = published
    model = build_mask_rcnn_t(seed=1)
    checkpointer = MViTCheckpointer(model)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert report.missing == [] and report.new == [] and report.dropped == []
    assert len(report.loaded) == len(model.backbone.bottom_up.state_dict())
    assert report.passed_on > 0  # FPN, RPN and ROI heads go to the standard loader
    assert_same_predictions(predict(model), expected)


def test_converted_pkl_loads_in_plain_detectron2(published, tmp_path: Path) -> None:
    """convert_checkpoint.py output: plain DetectionCheckpointer, identical predictions."""
    path, expected = published
    out = tmp_path / "converted.pkl"
    assert convert_tool.main([str(path), str(out), "--model", "T"]) == 0

    model = build_mask_rcnn_t(seed=2)
    DetectionCheckpointer(model).load(str(out))
    assert_same_predictions(predict(model), expected)


def test_cli_exit_status(tmp_path: Path) -> None:
    """The script runs as a command; a file that is not a checkpoint gives status 2."""
    bad = tmp_path / "model_final.pkl"
    bad.write_bytes(b"<html>403 Forbidden</html>")
    cmd: List[str] = [sys.executable, str(REPO / "tools/convert_checkpoint.py")]
    result = subprocess.run(
        cmd + [str(bad), str(tmp_path / "out.pkl"), "--model", "T"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "is not a checkpoint: it is an HTML/XML page" in result.stderr
    assert not (tmp_path / "out.pkl").exists()
