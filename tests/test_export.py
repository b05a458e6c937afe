"""Export: TorchScript tracing (any input size), ONNX (legacy and dynamo exporters) run by
onnxruntime, backbone and whole detector. Each file is read back from disk (``torch.jit.load``,
an onnxruntime session opened here) and its outputs compared, in this file, with an eager run of
the same module at two input sizes; ``compare_outputs``, which writes the tool's report, is
checked on outputs of known difference."""

import json
import math
import os
import subprocess
import sys
from typing import Any, Dict, List, Sequence

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from mvit_det.modeling.backbones.mvit import MVIT_CORES
from mvit_det.tools import export
from mvit_det.tools.loading import ToolError, load_model

from helpers import REPO, as_tensor, tiny_mvit_fpn

pytestmark = pytest.mark.numerics

DEMO = os.path.join(REPO, "configs", "demo", "mask_rcnn_mvitv2_shapes.py")
TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    "model.roi_heads.box_predictor.test_topk_per_image=20",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
]
SIZES = [(96, 128), (160, 96)]  # windows of 16 tokens cut by the border at both
FPN_LEVELS = ["p2", "p3", "p4", "p5", "p6"]
# The exported R-CNN outputs, in order (then the image size): Instances fields sorted by name.
DETECTOR_FIELDS = ("boxes", "classes", "masks", "scores")
DETECTOR_OUTPUTS = ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]


def assert_relative_close(actual: Any, expected: torch.Tensor, tol: float) -> None:
    """Same shape, and every element within ``tol`` times the largest magnitude of ``expected``."""
    actual = as_tensor(actual).double()
    expected = expected.double()
    assert tuple(actual.shape) == tuple(expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol * max(scale, 1e-30))


def assert_outputs_close(actual: Sequence[Any], expected: Sequence[torch.Tensor], tol: float):
    """Output by output (same number of outputs), as :func:`assert_relative_close`."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert_relative_close(got, want, tol)


def onnx_outputs(path: str, images: torch.Tensor) -> Dict[str, np.ndarray]:
    """The graph outputs by name, from an onnxruntime session on ``images``."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {graph_input.name: images.numpy()})))


def eager_detections(model: torch.nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The R-CNN's instances before resizing to the original image, on a (3, H, W) image."""
    with torch.no_grad():
        instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return {
        "boxes": instances.pred_boxes.tensor,  # (N, 4)
        "classes": instances.pred_classes,  # (N,)
        "masks": instances.pred_masks,  # (N, 1, 28, 28) mask probabilities
        "scores": instances.scores,  # (N,)
    }


def assert_detections_equal(outputs: Sequence[Any], image: torch.Tensor, eager: Dict, tol: float):
    """Exported detector outputs (boxes, classes, masks, scores, image size) against eager."""
    assert len(outputs) == len(DETECTOR_FIELDS) + 1
    assert len(eager["scores"]) > 0  # detections to compare
    got = dict(zip(DETECTOR_FIELDS, outputs))
    assert torch.equal(as_tensor(got["classes"]).long(), eager["classes"].long())
    for name in ("boxes", "masks", "scores"):
        assert_relative_close(got[name], eager[name], tol)
    assert as_tensor(outputs[-1]).tolist() == list(image.shape[1:])


def assert_report_within(report: Dict[str, Any], tol: float) -> None:
    """Every difference of the tool's report is a number <= tol (a NaN is not)."""
    errors = report["max_relative_difference"]
    assert errors and all(e <= tol for e in errors), errors


def test_compare_outputs_measures_known_differences():
    want = torch.tensor([[1.0, -4.0], [2.0, 0.5]])
    got = want + torch.tensor([[0.0, 0.5], [-0.25, 0.0]])  # largest difference 0.5, scale 4
    errors = export.compare_outputs((got, want), [want, want])
    assert errors == pytest.approx([0.125, 0.0], abs=1e-12)
    # numpy arrays (onnxruntime) and integer tensors (classes); lists and tuples alike
    classes = torch.tensor([3, 0, 1])
    errors = export.compare_outputs([got.numpy(), np.array([3, 0, 2])], (want, classes))
    assert errors == pytest.approx([0.125, 1 / 3], abs=1e-12)
    # an eager output of zeros: the absolute difference; empty outputs agree
    errors = export.compare_outputs(
        [torch.full((2,), 0.25), torch.zeros(0, 4)], [torch.zeros(2), torch.zeros(0, 4)]
    )
    assert errors == pytest.approx([0.25, 0.0])
    # a NaN is never reported as a small difference
    (error,) = export.compare_outputs([torch.tensor([1.0, math.nan])], [torch.tensor([1.0, 2.0])])
    assert not error <= 1.0


def test_compare_outputs_rejects_other_shapes_and_counts():
    want = [torch.zeros(2, 3), torch.zeros(4)]
    with pytest.raises(ToolError, match=r"shape \(3, 2\) != eager \(2, 3\)"):
        export.compare_outputs([torch.zeros(3, 2), torch.zeros(4)], want)
    with pytest.raises(ToolError, match="shape"):
        export.compare_outputs([np.zeros((2, 3)), np.zeros((1, 4))], want)
    with pytest.raises(ToolError, match="1 outputs, eager 2"):
        export.compare_outputs([torch.zeros(2, 3)], want)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_torchscript_trace_of_the_backbone_serves_other_sizes(attn_impl, tmp_path):
    module = tiny_mvit_fpn(attn_impl)
    export.export_torchscript(module, torch.randn(1, 3, *SIZES[0]), str(tmp_path / "b.ts"))
    loaded = torch.jit.load(str(tmp_path / "b.ts"))
    for shape in [(1, 3, *SIZES[0]), (2, 3, *SIZES[1]), (1, 3, 64, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            features = module.backbone(x)
            actual = loaded(x)
        assert list(features) == FPN_LEVELS
        assert_outputs_close(actual, [features[name] for name in FPN_LEVELS], 1e-6)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_legacy_onnx_backbone_is_valid_and_matches(attn_impl, tmp_path):
    module = tiny_mvit_fpn(attn_impl)
    for size in SIZES:
        path = str(tmp_path / f"b_{size[0]}.onnx")
        x = torch.randn(1, 3, *size)
        export.export_onnx(module, x, path, "legacy", output_names=module.names)
        graph = onnx.load(path)
        onnx.checker.check_model(graph, full_check=True)  # strict shape inference included
        assert [o.name for o in graph.graph.output] == FPN_LEVELS
        outputs = onnx_outputs(path, x)
        with torch.no_grad():
            features = module.backbone(x)
        for name in FPN_LEVELS:
            assert_relative_close(outputs[name], features[name], 1e-5)
        # the tool's runner gives the same arrays, in output order
        for got, want in zip(export.run_onnx(path, x), outputs.values(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_dynamo_onnx_backbone_matches(tmp_path):
    module = tiny_mvit_fpn("sdpa")
    for size in SIZES:
        path = str(tmp_path / f"b_{size[0]}.onnx")
        x = torch.randn(1, 3, *size)
        export.export_onnx(module, x, path, "dynamo", output_names=module.names)
        outputs = onnx_outputs(path, x)
        assert list(outputs) == FPN_LEVELS
        with torch.no_grad():
            features = module.backbone(x)
        for name in FPN_LEVELS:
            assert_relative_close(outputs[name], features[name], 1e-5)


def test_whole_detector_torchscript_at_two_sizes(tmp_path, capsys):
    loaded = load_model(DEMO, "", "cpu", TINY)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": loaded.model.state_dict()}, weights)
    out = tmp_path / "ts"
    argv = ["--config", DEMO, "--weights", weights, "--format", "torchscript", "--what", "model"]
    argv += ["--image-size", "96x128", "--output", str(out), "--device", "cpu", "--opts"] + TINY
    assert export.main(argv) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["input_shape"] == [3, 96, 128] and report["outputs"] == DETECTOR_OUTPUTS
    assert report["requested_image_size"] == report["input_size"] == [96, 128]
    assert_report_within(report, 0.0)
    assert "largest relative difference" in capsys.readouterr().out
    traced = torch.jit.load(str(out / "model.ts"))
    for size in [(96, 128), (128, 64)]:
        torch.manual_seed(1)
        image = torch.randint(0, 256, (3, *size)).float()
        with torch.no_grad():
            outputs = traced(image)
        assert_detections_equal(outputs, image, eager_detections(loaded.model, image), 1e-5)


def test_whole_detector_legacy_onnx_at_two_sizes(tmp_path):
    loaded = load_model(DEMO, "", "cpu", TINY)
    for size in [(96, 128), (128, 64)]:
        report = export.export(loaded, "onnx", "model", size, str(tmp_path / str(size[0])))
        assert_report_within(report, 1e-4)
        assert report["input_shape"] == [3, *size]
        # the graph's outputs carry the names export.json gives
        graph_outputs = [o.name for o in onnx.load(report["file"]).graph.output]
        assert graph_outputs == report["outputs"] == DETECTOR_OUTPUTS
        torch.manual_seed(2)
        image = torch.randint(0, 256, (3, *size)).float()  # another image of the export size
        outputs = list(onnx_outputs(report["file"], image).values())
        assert_detections_equal(outputs, image, eager_detections(loaded.model, image), 1e-4)


def test_export_errors(tmp_path, capsys):
    argv = ["--config", DEMO, "--format", "onnx", "--exporter", "dynamo", "--what", "model"]
    argv += ["--output", str(tmp_path), "--opts"] + TINY
    assert export.main(argv) == 2
    assert "--exporter legacy" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_scripted_mvit_equals_eager_at_any_size(attn_impl, tmp_path):
    mvit = tiny_mvit_fpn(attn_impl).backbone.bottom_up
    export.export_torchscript(mvit, torch.randn(1, 3, 64, 64), str(tmp_path / "m.ts"), script=True)
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    for shape in [(1, 3, *SIZES[0]), (2, 3, *SIZES[1]), (1, 3, 40, 72)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected, actual = mvit(x), scripted(x)
        assert list(actual) == list(expected)
        # scripted code pads window queries as a trace does: equal up to summation order
        assert_outputs_close(list(actual.values()), list(expected.values()), 1e-6)


@pytest.mark.parametrize("attn_impl", MVIT_CORES.names())
def test_every_mvit_core_scripts(attn_impl):
    """Every name of the core table (and "auto") runs in TorchScript, as in eager."""
    mvit = tiny_mvit_fpn(attn_impl).backbone.bottom_up
    scripted = torch.jit.script(mvit)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = mvit(x), scripted(x)
    assert list(actual) == list(expected)
    assert_outputs_close(list(actual.values()), list(expected.values()), 1e-6)


def test_export_tool_scripts_the_mvit(tmp_path):
    argv = ["--config", DEMO, "--format", "torchscript", "--script", "--what", "mvit"]
    argv += ["--image-size", "64x96", "--output", str(tmp_path), "--device", "cpu", "--opts"]
    assert export.main(argv + TINY) == 0
    report = json.loads((tmp_path / "export.json").read_text())
    names: List[str] = [f"scale{i}" for i in range(2, 6)]
    assert report["exporter"] == "script" and report["outputs"] == names
    # --image-size is the model's input size, not resized by the config's test resize (longer
    # side 128 would make 64x96 85x128); multiples of 32 need no padding
    assert report["requested_image_size"] == report["input_size"] == [64, 96]
    assert report["input_shape"] == [1, 3, 64, 96]
    assert_report_within(report, 1e-6)
    scripted = torch.jit.load(str(tmp_path / "mvit.ts"))
    assert isinstance(scripted, torch.jit.ScriptModule)
    # the file against an eager MViT of the config holding the file's weights
    mvit = load_model(DEMO, "", "cpu", TINY).model.backbone.bottom_up
    mvit.load_state_dict(scripted.state_dict())
    x = torch.randn(1, *report["input_shape"][1:])
    with torch.no_grad():
        expected, actual = mvit(x), scripted(x)
    assert list(actual) == list(expected) == names
    assert_outputs_close(list(actual.values()), list(expected.values()), 1e-6)
    wrong = ["--config", DEMO, "--format", "onnx", "--script", "--what", "mvit", "--output"]
    assert export.main(wrong + [str(tmp_path / "x"), "--opts"] + TINY) == 2


def test_loading_model_ts_needs_torchvision(tmp_path):
    """The Python block of docs/tools.md that loads model.ts, in a fresh interpreter (where
    nothing has imported torchvision), on a file the tool wrote."""
    out = tmp_path / "export"
    argv = ["--config", DEMO, "--format", "torchscript", "--what", "model", "--device", "cpu"]
    assert export.main(argv + ["--image-size", "64x96", "--output", str(out), "--opts"] + TINY) == 0
    docs = (REPO / "docs" / "tools.md").read_text()
    block = docs.split("Loading `model.ts` needs `import torchvision`", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    assert "import torchvision" in code
    code = code.replace("export/model.ts", str(out / "model.ts"))
    code = code.replace("torch.zeros(3, 800, 1067)", "torch.zeros(3, 64, 96)")
    without = code.replace("import torchvision", "pass  #")
    script = f"""
import torch
try:
    exec({without!r})
    raise SystemExit("loaded without torchvision")
except RuntimeError as e:
    assert "torchvision::nms" in str(e), e
exec({code!r})
assert pred_masks.shape[1:] == (1, 28, 28) and tuple(image_size.tolist()) == (64, 96)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_detectron2_scripting_of_a_yacs_detector(shapes_datasets_root):
    """What Detectron2's export_model.py --export-method scripting does (an adapter returning the
    Instances fields, scripted with scripting_with_instances), on an MViT Mask R-CNN built from a
    shipped YAML: it scripts, and gives the eager instances before resizing."""
    from typing import Tuple

    from detectron2.config import get_cfg
    from detectron2.export import scripting_with_instances
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "yacs" / "demo" / "mask_rcnn_mvitv2_shapes.yaml"))
    cfg.merge_from_list(["MODEL.MVIT.EMBED_DIM", "16", "MODEL.MVIT.DEPTH", "4"])
    cfg.merge_from_list(["MODEL.MVIT.LAST_BLOCK_INDEXES", "[0, 1, 2, 3]", "MODEL.DEVICE", "cpu"])
    cfg.merge_from_list(
        ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()

    class ScriptableAdapter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
            instances = self.model.inference(inputs, do_postprocess=False)
            return [i.get_fields() for i in instances]

    fields = {
        "proposal_boxes": Boxes,
        "objectness_logits": torch.Tensor,
        "pred_boxes": Boxes,
        "scores": torch.Tensor,
        "pred_classes": torch.Tensor,
        "pred_masks": torch.Tensor,
    }
    scripted = scripting_with_instances(ScriptableAdapter().eval(), fields)  # fmt: skip
    image = torch.randint(0, 256, (3, 96, 128)).float()
    with torch.no_grad():
        (got,) = scripted(({"image": image},))
    expected = eager_detections(model, image)
    assert len(expected["scores"]) > 0
    assert torch.equal(got["pred_classes"], expected["classes"])
    boxes = got["pred_boxes"]  # the scripted Instances give their Boxes as a tensor
    assert_relative_close(getattr(boxes, "tensor", boxes), expected["boxes"], 1e-5)
    assert_relative_close(got["pred_masks"], expected["masks"], 1e-5)
    assert_relative_close(got["scores"], expected["scores"], 1e-5)
