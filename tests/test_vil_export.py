"""Export of ViL: TorchScript tracing and ONNX (legacy and dynamo exporters) of the backbone, and
the whole detector, each read back from disk (``torch.jit.load``, an onnxruntime session opened
here) and equal to eager at the export size, for sizes that the windows do not tile (the
padded-key path runs). The comparisons are written here, not taken from the tool."""

from typing import Any, Dict, Sequence

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from helpers import as_tensor, tiny_vil_fpn
from mvit_det.tools import export
from mvit_det.tools.loading import load_model

pytestmark = pytest.mark.numerics

SIZES = [(96, 128), (64, 160)]  # stage maps 24x32 .. 2x5 tokens: windows of 3 do not tile them
DEMO = "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py"
FPN_LEVELS = ["p2", "p3", "p4", "p5", "p6"]


def assert_relative_close(actual: Any, expected: torch.Tensor, tol: float) -> None:
    """Same shape, and every element within ``tol`` times the largest magnitude of ``expected``."""
    actual, expected = as_tensor(actual).double(), expected.double()
    assert tuple(actual.shape) == tuple(expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol * max(scale, 1e-30))


def onnx_outputs(path: str, images: torch.Tensor) -> Dict[str, np.ndarray]:
    """The graph outputs by name, from an onnxruntime session on ``images``."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {graph_input.name: images.numpy()})))


def assert_features_equal(outputs: Sequence[Any], features: Dict[str, torch.Tensor], tol: float):
    """Positional backbone outputs against the eager FPN's dict, level by level."""
    assert list(features) == FPN_LEVELS and len(outputs) == len(FPN_LEVELS)
    for got, name in zip(outputs, FPN_LEVELS):
        assert_relative_close(got, features[name], tol)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_traced_and_legacy_onnx_backbones_equal_eager(attn_impl, tmp_path):
    module = tiny_vil_fpn(attn_impl)
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            features = module.backbone(x)
        export.export_torchscript(module, x, str(tmp_path / f"b_{size[0]}.ts"))
        traced = torch.jit.load(str(tmp_path / f"b_{size[0]}.ts"))
        with torch.no_grad():
            assert_features_equal(traced(x), features, 1e-6)
        path = str(tmp_path / f"b_{size[0]}.onnx")
        export.export_onnx(module, x, path, "legacy", output_names=module.names)
        onnx.checker.check_model(onnx.load(path), full_check=True)
        outputs = onnx_outputs(path, x)
        assert list(outputs) == FPN_LEVELS
        assert_features_equal(list(outputs.values()), features, 1e-5)


def test_dynamo_onnx_backbone_equals_eager(tmp_path):
    module = tiny_vil_fpn("sdpa")
    x = torch.randn(1, 3, *SIZES[1])
    path = str(tmp_path / "b.onnx")
    export.export_onnx(module, x, path, "dynamo", output_names=module.names)
    outputs = onnx_outputs(path, x)
    assert list(outputs) == FPN_LEVELS
    with torch.no_grad():
        assert_features_equal(list(outputs.values()), module.backbone(x), 1e-5)


def test_whole_detector_exports(tmp_path):
    loaded = load_model(DEMO, "", "cpu", ["model.backbone.bottom_up.window=3"])
    for fmt in ("torchscript", "onnx"):
        report = export.export(loaded, fmt, "model", (96, 128), str(tmp_path / fmt))
        errors = report["max_relative_difference"]
        assert len(errors) == 5 and all(e <= 1e-4 for e in errors), report  # a NaN fails too
        # the file, on another image of the export size, against the eager R-CNN
        torch.manual_seed(2)
        image = torch.randint(0, 256, report["input_shape"]).float()  # (3, H, W)
        if fmt == "torchscript":
            with torch.no_grad():
                outputs = list(torch.jit.load(report["file"])(image))
        else:
            outputs = list(onnx_outputs(report["file"], image).values())
        with torch.no_grad():
            instances = loaded.model.inference([{"image": image}], do_postprocess=False)[0]
        assert len(instances) > 0 and len(outputs) == 5
        boxes, classes, masks, scores, image_size = outputs
        assert torch.equal(as_tensor(classes).long(), instances.pred_classes.long())
        assert_relative_close(boxes, instances.pred_boxes.tensor, 1e-4)  # (N, 4)
        assert_relative_close(masks, instances.pred_masks, 1e-4)  # (N, 1, 28, 28)
        assert_relative_close(scores, instances.scores, 1e-4)  # (N,)
        assert as_tensor(image_size).tolist() == report["input_shape"][1:]
