"""Export: TorchScript tracing (any input size), ONNX (legacy and dynamo exporters) run by
onnxruntime, backbone and whole detector, each compared with eager at two input sizes."""

import json
import os

import onnx
import pytest
import torch

from mvit_det import MViT, build_mvit_fpn
from mvit_det.tools import export
from mvit_det.tools.loading import load_model

from helpers import REPO

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


def tiny_backbone(attn_impl: str) -> export.BackboneOutputs:
    """MViT + FPN with windows, global blocks, stage transitions and non-zero rel-pos tables."""
    torch.manual_seed(0)
    bottom_up = MViT(
        embed_dim=16,
        depth=5,
        num_heads=1,
        last_block_indexes=(0, 2, 3, 4),
        adaptive_window_size=16,
        rel_pos_zero_init=False,
        attn_impl=attn_impl,
    )
    return export.BackboneOutputs(build_mvit_fpn(bottom_up, out_channels=32)).eval()


def assert_close(actual, expected, tol):
    errors = export.compare_outputs(actual, expected)
    assert max(errors) <= tol, errors


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_torchscript_trace_of_the_backbone_serves_other_sizes(attn_impl, tmp_path):
    module = tiny_backbone(attn_impl)
    traced = export.export_torchscript(module, torch.randn(1, 3, *SIZES[0]), str(tmp_path / "b.ts"))
    loaded = torch.jit.load(str(tmp_path / "b.ts"))
    for shape in [(1, 3, *SIZES[0]), (2, 3, *SIZES[1]), (1, 3, 64, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = module(x)
            assert_close(traced(x), expected, 1e-6)
            assert_close(loaded(x), expected, 1e-6)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_legacy_onnx_backbone_is_valid_and_matches(attn_impl, tmp_path):
    module = tiny_backbone(attn_impl)
    for size in SIZES:
        path = str(tmp_path / f"b_{size[0]}.onnx")
        x = torch.randn(1, 3, *size)
        export.export_onnx(module, x, path, "legacy", output_names=module.names)
        graph = onnx.load(path)
        onnx.checker.check_model(graph, full_check=True)  # strict shape inference included
        assert [o.name for o in graph.graph.output] == ["p2", "p3", "p4", "p5", "p6"]
        with torch.no_grad():
            assert_close(export.run_onnx(path, x), module(x), 1e-5)


def test_dynamo_onnx_backbone_matches(tmp_path):
    module = tiny_backbone("sdpa")
    for size in SIZES:
        path = str(tmp_path / f"b_{size[0]}.onnx")
        x = torch.randn(1, 3, *size)
        export.export_onnx(module, x, path, "dynamo", output_names=module.names)
        with torch.no_grad():
            assert_close(export.run_onnx(path, x), module(x), 1e-5)


def test_whole_detector_torchscript_at_two_sizes(tmp_path, capsys):
    loaded = load_model(DEMO, "", "cpu", TINY)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": loaded.model.state_dict()}, weights)
    out = tmp_path / "ts"
    argv = ["--config", DEMO, "--weights", weights, "--format", "torchscript", "--what", "model"]
    argv += ["--image-size", "96x128", "--output", str(out), "--device", "cpu", "--opts"] + TINY
    assert export.main(argv) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["input_shape"] == [3, 96, 128] and max(report["max_relative_difference"]) == 0
    assert "largest relative difference" in capsys.readouterr().out
    traced = torch.jit.load(str(out / "model.ts"))
    for size in [(96, 128), (128, 64)]:
        torch.manual_seed(1)
        image = torch.randint(0, 256, (3, *size)).float()
        adapter = export.detector_adapter(loaded.model, image)
        with torch.no_grad():
            expected = adapter(image)
            boxes, classes, masks, scores, image_size = traced(image)
        assert len(expected[0]) > 0  # detections to compare
        assert image_size.tolist() == list(size)
        assert_close((boxes, classes, masks, scores), expected[:4], 1e-5)


def test_whole_detector_legacy_onnx_at_two_sizes(tmp_path):
    loaded = load_model(DEMO, "", "cpu", TINY)
    for size in [(96, 128), (128, 64)]:
        report = export.export(loaded, "onnx", "model", size, str(tmp_path / str(size[0])))
        assert max(report["max_relative_difference"]) <= 1e-4, report
        assert report["input_shape"] == [3, *size]


def test_export_errors(tmp_path, capsys):
    argv = ["--config", DEMO, "--format", "onnx", "--exporter", "dynamo", "--what", "model"]
    argv += ["--output", str(tmp_path), "--opts"] + TINY
    assert export.main(argv) == 2
    assert "--exporter legacy" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_scripted_mvit_equals_eager_at_any_size(attn_impl, tmp_path):
    mvit = tiny_backbone(attn_impl).backbone.bottom_up
    export.export_torchscript(mvit, torch.randn(1, 3, 64, 64), str(tmp_path / "m.ts"), script=True)
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    for shape in [(1, 3, *SIZES[0]), (2, 3, *SIZES[1]), (1, 3, 40, 72)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected, actual = mvit(x), scripted(x)
        assert list(actual) == list(expected)
        # scripted code pads window queries as a trace does: equal up to summation order
        assert_close(list(actual.values()), list(expected.values()), 1e-6)


def test_export_tool_scripts_the_mvit(tmp_path):
    argv = ["--config", DEMO, "--format", "torchscript", "--script", "--what", "mvit"]
    argv += ["--image-size", "64x96", "--output", str(tmp_path), "--device", "cpu", "--opts"]
    assert export.main(argv + TINY) == 0
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["exporter"] == "script" and report["outputs"] == [
        f"scale{i}" for i in range(2, 6)
    ]
    assert max(report["max_relative_difference"]) <= 1e-6
    assert isinstance(torch.jit.load(str(tmp_path / "mvit.ts")), torch.jit.ScriptModule)
    wrong = ["--config", DEMO, "--format", "onnx", "--script", "--what", "mvit", "--output"]
    assert export.main(wrong + [str(tmp_path / "x"), "--opts"] + TINY) == 2
