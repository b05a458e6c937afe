"""Export of ViL: TorchScript tracing and ONNX (legacy and dynamo exporters, run by onnxruntime)
of the backbone, and the whole detector, each equal to eager at the export size, for sizes that
the windows do not tile (the padded-key path runs)."""

import onnx
import pytest
import torch
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from helpers import TINY_VIL
from mvit_det import ViL
from mvit_det.tools import export
from mvit_det.tools.loading import load_model

pytestmark = pytest.mark.numerics

SIZES = [(96, 128), (64, 160)]  # stage maps 24x32 .. 2x5 tokens: windows of 3 do not tile them
DEMO = "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py"


def tiny_backbone(attn_impl: str) -> export.BackboneOutputs:
    torch.manual_seed(0)
    bottom_up = ViL(**TINY_VIL, attn_impl=attn_impl)
    for name, p in bottom_up.named_parameters():
        if "relative_position_bias" in name:
            torch.nn.init.normal_(p, std=0.5)  # published tables are not zero
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=list(bottom_up.output_shape()),
        out_channels=32,
        top_block=LastLevelMaxPool(),
    )
    return export.BackboneOutputs(fpn).eval()


def assert_close(actual, expected, tol):
    errors = export.compare_outputs(actual, expected)
    assert max(errors) <= tol, errors


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_traced_and_legacy_onnx_backbones_equal_eager(attn_impl, tmp_path):
    module = tiny_backbone(attn_impl)
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = module(x)
        traced = export.export_torchscript(module, x, str(tmp_path / f"b_{size[0]}.ts"))
        with torch.no_grad():
            assert_close(traced(x), expected, 1e-6)
        path = str(tmp_path / f"b_{size[0]}.onnx")
        export.export_onnx(module, x, path, "legacy", output_names=module.names)
        onnx.checker.check_model(onnx.load(path), full_check=True)
        assert_close(export.run_onnx(path, x), expected, 1e-5)


def test_dynamo_onnx_backbone_equals_eager(tmp_path):
    module = tiny_backbone("sdpa")
    x = torch.randn(1, 3, *SIZES[1])
    path = str(tmp_path / "b.onnx")
    export.export_onnx(module, x, path, "dynamo", output_names=module.names)
    with torch.no_grad():
        assert_close(export.run_onnx(path, x), module(x), 1e-5)


def test_whole_detector_exports(tmp_path):
    loaded = load_model(DEMO, "", "cpu", ["model.backbone.bottom_up.window=3"])
    for fmt in ("torchscript", "onnx"):
        report = export.export(loaded, fmt, "model", (96, 128), str(tmp_path / fmt))
        assert max(report["max_relative_difference"]) <= 1e-4, report
