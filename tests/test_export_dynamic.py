"""ONNX files of dynamic input size: each file is exported once, checked by ``onnx.checker`` with
full shape inference, and run in onnxruntime at three more sizes (a square, a rectangle, and one
that the attention windows/chunks do not tile); at each size its outputs are compared, in this
file, with an eager run of the same module made here. Backbone + FPN (MViT, ViL; also at batch
2), and the whole Mask R-CNN and Cascade Mask R-CNN with either backbone (the Cascade R-CNN heads
are built here), legacy exporter; the backbones also with the dynamo exporter. The operator
tables of docs/tools.md are compared with the operators of these files.

What equality means: onnxruntime computes in another order than PyTorch, so features are equal
within 1e-5 of their largest magnitude; detections are the same number of instances with equal
classes, and boxes, scores and mask probabilities within 1e-4 of their largest magnitude."""

import json
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import (
    CascadeROIHeads,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
)

from helpers import REPO, tiny_mvit_fpn, tiny_vil_fpn
from mvit_det import MViT
from mvit_det.tools import export
from mvit_det.tools.loading import LoadedModel, load_model

pytestmark = pytest.mark.numerics

MVIT_DEMO = str(REPO / "configs" / "demo" / "mask_rcnn_mvitv2_shapes.py")
VIL_DEMO = "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py"
# Small detectors: MViT windows of 16 tokens at stride 4 (64 px) halved per stage; ViL chunks of
# 3 tokens (12 px at stride 4).
MVIT_OPTS = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    "model.backbone.bottom_up.adaptive_window_size=16",
]
VIL_OPTS = ["model.backbone.bottom_up.window=3"]
FPN_LEVELS = ["p2", "p3", "p4", "p5", "p6"]
DETECTOR_OUTPUTS = ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]

# Backbone inputs (multiples of the FPN's 32): exported at 1x96x128, run at a square (batch 2), a
# rectangle and a size that the windows do not tile: 96 px are 24 tokens at stride 4, cut by
# MViT's 16-token windows; 160 px are 40 tokens, cut by ViL's 3-token chunks.
BACKBONE_EXPORT = (1, 3, 96, 128)
MVIT_SHAPES = [(2, 3, 128, 128), (1, 3, 64, 192), (1, 3, 96, 160)]
VIL_SHAPES = [(2, 3, 96, 96), (1, 3, 192, 96), (1, 3, 160, 64)]
# Detector images (padded to multiples of 32 inside the graph): a square, a rectangle, and
# 100x84 (padded to 128x96: 24 tokens, not tiled by the 16-token MViT windows; 32 tokens, not
# tiled by the 3-token ViL chunks).
DETECTOR_EXPORT = (96, 128)
DETECTOR_SIZES = [(128, 128), (64, 192), (100, 84)]


# ------------------------------------------------------------------ helpers written for the tests


def onnx_session(path: str) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def onnx_run(session: onnxruntime.InferenceSession, x: torch.Tensor) -> Dict[str, np.ndarray]:
    """The graph outputs by name, on ``x``."""
    (graph_input,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {graph_input.name: x.numpy()})))


def input_dims(path: str) -> List[Any]:
    """The graph input's dims: the name of a dynamic one, the number of a fixed one."""
    graph = onnx.load(path)
    (graph_input,) = graph.graph.input
    return [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]


def documented_operators(graph: str) -> set:
    """The operators docs/tools.md lists for ``graph`` (a row of its operator table)."""
    docs = (REPO / "docs" / "tools.md").read_text()
    rows = re.findall(r"^\| (.+?) \| ([A-Z][A-Za-z]*(?:, [A-Z][A-Za-z]*)+) \|$", docs, re.M)
    table = {label: set(ops.split(", ")) for label, ops in rows}
    return table[graph]


def assert_documented(path: str, graph: str) -> None:
    """The file's operators are those docs/tools.md lists for ``graph``."""
    assert set(export.onnx_operators(path)) == documented_operators(graph)


def check_file(path: str) -> None:
    """onnx.checker with full (strict) shape inference."""
    onnx.checker.check_model(onnx.load(path), full_check=True)


def assert_relative_close(actual: Any, expected: torch.Tensor, tol: float) -> None:
    """Same shape, and every element within ``tol`` times the largest magnitude of ``expected``."""
    actual = torch.from_numpy(np.asarray(actual)).double()
    expected = expected.double()
    assert tuple(actual.shape) == tuple(expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol * max(scale, 1e-30))


def assert_features_equal(session, module: export.BackboneOutputs, x: torch.Tensor) -> None:
    """The file's feature maps on ``x`` against the eager FPN's, level by level."""
    outputs = onnx_run(session, x)
    with torch.no_grad():
        features = module.backbone(x)
    assert list(outputs) == list(features) == FPN_LEVELS
    for name in FPN_LEVELS:
        assert_relative_close(outputs[name], features[name], 1e-5)


def eager_detections(model: torch.nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The R-CNN's instances before resizing to the original image, on a (3, H, W) image."""
    with torch.no_grad():
        instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return {
        "pred_boxes": instances.pred_boxes.tensor,  # (N, 4)
        "pred_classes": instances.pred_classes,  # (N,)
        "pred_masks": instances.pred_masks,  # (N, 1, 28, 28) mask probabilities
        "scores": instances.scores,  # (N,)
    }


def assert_detections_equal(session, model: torch.nn.Module, image: torch.Tensor) -> int:
    """The file's detections on ``image`` against the eager R-CNN's; returns their number."""
    outputs = onnx_run(session, image)
    eager = eager_detections(model, image)
    assert list(outputs) == DETECTOR_OUTPUTS
    assert outputs["image_size"].tolist() == list(image.shape[1:])
    count = len(eager["scores"])
    assert count > 0 and outputs["scores"].shape == (count,)
    assert torch.equal(torch.from_numpy(outputs["pred_classes"]), eager["pred_classes"])
    for name in ("pred_boxes", "pred_masks", "scores"):
        assert_relative_close(outputs[name], eager[name], 1e-4)
    return count


def random_image(size: Tuple[int, int], seed: int) -> torch.Tensor:
    """A (3, H, W) float image of 0-255 pixels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), generator=generator).float()


def cascade_heads(model: torch.nn.Module) -> CascadeROIHeads:
    """
    The Cascade R-CNN heads of the published Cascade Mask R-CNN recipe (three stages at IoU 0.5,
    0.6, 0.7, class-agnostic regression with weights (10, 10, 5, 5), (20, 20, 10, 10), (30, 30,
    15, 15)), small (one conv of 16 and one fc of 64 per stage), with the Mask R-CNN's box pooler
    and mask branch.
    """
    heads = model.roi_heads
    channels = model.backbone.output_shape()["p2"].channels
    torch.manual_seed(1)
    box_heads = [
        FastRCNNConvFCHead(
            ShapeSpec(channels=channels, height=7, width=7), conv_dims=[16], fc_dims=[64]
        )
        for _ in range(3)
    ]
    predictors = [
        FastRCNNOutputLayers(
            ShapeSpec(channels=64),
            box2box_transform=Box2BoxTransform(weights=(w_xy, w_xy, w_wh, w_wh)),
            num_classes=heads.num_classes,
            cls_agnostic_bbox_reg=True,
            test_score_thresh=0.05,
            test_topk_per_image=100,
        )
        for w_xy, w_wh in [(10, 5), (20, 10), (30, 15)]
    ]
    matchers = [Matcher([iou], [0, 1], allow_low_quality_matches=False) for iou in (0.5, 0.6, 0.7)]
    return CascadeROIHeads(
        box_in_features=heads.box_in_features,
        box_pooler=heads.box_pooler,
        box_heads=box_heads,
        box_predictors=predictors,
        proposal_matchers=matchers,
        num_classes=heads.num_classes,
        batch_size_per_image=heads.batch_size_per_image,
        positive_fraction=heads.positive_fraction,
        mask_in_features=heads.mask_in_features,
        mask_pooler=heads.mask_pooler,
        mask_head=heads.mask_head,
    ).eval()


def load_detector(config: str, opts: Sequence[str], cascade: bool) -> LoadedModel:
    """The detector of a config (seeded initialisation), with Cascade R-CNN heads if asked."""
    torch.manual_seed(0)
    loaded = load_model(config, "", "cpu", opts)
    if cascade:
        loaded.model.roi_heads = cascade_heads(loaded.model)
        assert type(loaded.model.roi_heads) is CascadeROIHeads
    return loaded


# ------------------------------------------------------------------ backbones


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "family,build,shapes,documented",
    [
        ("mvit", tiny_mvit_fpn, MVIT_SHAPES, "MViT + FPN (`--what backbone`), legacy"),
        ("vil", tiny_vil_fpn, VIL_SHAPES, "ViL + FPN, legacy"),
    ],
    ids=["mvit", "vil"],
)
def test_legacy_backbone_one_file_every_size_and_batch(
    family, build, shapes, documented, attn_impl, tmp_path
):
    module = build(attn_impl)
    path = str(tmp_path / "b.onnx")
    axes = export.dynamic_axes("backbone", module.names)
    export.export_onnx(
        module, torch.randn(*BACKBONE_EXPORT), path, "legacy", 17, module.names, axes
    )
    check_file(path)
    assert input_dims(path) == ["batch", 3, "height", "width"]
    if attn_impl == "sdpa":  # the default core ("auto")
        assert_documented(path, documented)
    session = onnx_session(path)
    for shape in [BACKBONE_EXPORT] + shapes:
        assert_features_equal(session, module, torch.randn(*shape))


# The backbones alone take any size: sizes that are no multiple of 32 make ViL's patch
# embeddings pad (100 px are 25 tokens at stride 4, 13 at stride 8, ...) and cut every window.
TRUNK_EXPORT = (1, 3, 96, 128)
TRUNK_SHAPES = [(2, 3, 100, 100), (1, 3, 100, 84), (1, 3, 52, 180)]


@pytest.mark.parametrize("family", ["mvit", "vil"])
def test_legacy_backbone_alone_at_sizes_no_multiple_of_32(family, tmp_path):
    fpn = (tiny_mvit_fpn if family == "mvit" else tiny_vil_fpn)("sdpa").backbone
    module = export.BackboneOutputs(fpn.bottom_up).eval()
    path = str(tmp_path / "trunk.onnx")
    axes = export.dynamic_axes("trunk", module.names)
    export.export_onnx(module, torch.randn(*TRUNK_EXPORT), path, "legacy", 17, module.names, axes)
    check_file(path)
    session = onnx_session(path)
    for shape in TRUNK_SHAPES:
        x = torch.randn(*shape)
        outputs = onnx_run(session, x)
        with torch.no_grad():
            features = module.backbone(x)
        assert list(outputs) == list(features) == [f"scale{i}" for i in range(2, 6)]
        for name, want in features.items():
            assert want.shape[-2:] == tuple(-(-s // 2 ** int(name[-1])) for s in shape[-2:])
            assert_relative_close(outputs[name], want, 1e-5)


def test_legacy_mvit_absolute_positions_at_other_grids(tmp_path):
    """MViTv1-style absolute position embedding, exported at the size whose token grid equals
    the table's (no resize needed there), run at other grids (resized in the graph)."""
    torch.manual_seed(0)
    mvit = MViT(
        embed_dim=16,
        depth=4,
        num_heads=1,
        last_block_indexes=(0, 1, 2, 3),
        adaptive_window_size=16,
        use_abs_pos=True,
        use_rel_pos=False,
        residual_pooling=False,
        pretrain_img_size=128,  # a 32 x 32 token table
    )
    torch.nn.init.normal_(mvit.pos_embed, std=1.0)
    module = export.BackboneOutputs(mvit).eval()
    path = str(tmp_path / "abs.onnx")
    axes = export.dynamic_axes("trunk", module.names)
    export.export_onnx(module, torch.randn(1, 3, 128, 128), path, "legacy", 17, module.names, axes)
    session = onnx_session(path)
    for shape in [(1, 3, 128, 128), (1, 3, 96, 160)]:
        x = torch.randn(*shape)
        outputs = onnx_run(session, x)
        with torch.no_grad():
            features = mvit(x)
        for name, want in features.items():
            assert_relative_close(outputs[name], want, 1e-5)


def test_traced_vil_serves_other_sizes(tmp_path):
    """A TorchScript trace of ViL + FPN, saved and reloaded, at other sizes than the trace's."""
    module = tiny_vil_fpn("sdpa")
    export.export_torchscript(module, torch.randn(*BACKBONE_EXPORT), str(tmp_path / "b.ts"))
    traced = torch.jit.load(str(tmp_path / "b.ts"))
    for shape in VIL_SHAPES:
        x = torch.randn(*shape)
        with torch.no_grad():
            features, outputs = module.backbone(x), traced(x)
        assert list(features) == FPN_LEVELS
        for got, name in zip(outputs, FPN_LEVELS, strict=True):
            assert_relative_close(got.numpy(), features[name], 1e-6)


def test_dynamo_mvit_backbone_one_file_every_size_and_batch(tmp_path):
    """The dynamo exporter (torch.export with dynamic sizes): the slowest test of this file
    (about 35 s on 2 cores: torch.export reasons symbolically about the window arithmetic)."""
    module = tiny_mvit_fpn("sdpa")
    path = str(tmp_path / "b.onnx")
    axes = export.dynamic_axes("backbone", module.names)
    example = torch.randn(2, 3, 96, 128)  # torch.export fixes a size of 1: a batch of two
    export.export_onnx(module, example, path, "dynamo", 18, module.names, axes)
    check_file(path)
    dims = input_dims(path)
    assert dims[1] == 3 and all(isinstance(d, str) for d in dims[:1] + dims[2:]), dims
    assert_documented(path, "MViT + FPN, dynamo")
    session = onnx_session(path)
    for shape in [BACKBONE_EXPORT] + MVIT_SHAPES:
        assert_features_equal(session, module, torch.randn(*shape))


# ------------------------------------------------------------------ whole detectors


def give_detections(model: torch.nn.Module) -> None:
    """Class scores that spread (the initialisation gives nearly equal ones), and a score
    threshold of 0.5, so that each image has some detections, a number that depends on the
    image."""
    torch.manual_seed(5)
    heads = model.roi_heads
    predictors = heads.box_predictor
    for predictor in predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]:
        torch.nn.init.normal_(predictor.cls_score.weight, std=0.1)
        predictor.test_score_thresh = 0.5
        predictor.test_topk_per_image = 1000


@pytest.mark.parametrize(
    "config, opts, cascade, documented",
    [
        (MVIT_DEMO, MVIT_OPTS, False, "Mask R-CNN MViT (`--what model`), legacy"),
        (MVIT_DEMO, MVIT_OPTS, True, "Cascade Mask R-CNN MViT, legacy"),
        (VIL_DEMO, VIL_OPTS, False, "Mask R-CNN ViL, legacy"),
        (VIL_DEMO, VIL_OPTS, True, "Mask R-CNN ViL, legacy"),
    ],
    ids=["mask_rcnn_mvit", "cascade_mask_rcnn_mvit", "mask_rcnn_vil", "cascade_mask_rcnn_vil"],
)
def test_whole_detector_one_file_every_size(config, opts, cascade, documented, tmp_path):
    """The tool's legacy export with --dynamic-size (its own checks at two other sizes pass),
    then the file, opened here, against the eager R-CNN at three more sizes."""
    loaded = load_detector(config, opts, cascade)
    give_detections(loaded.model)
    report = export.export(
        loaded, "onnx", "model", DETECTOR_EXPORT, str(tmp_path), dynamic_size=True
    )
    path = report["file"]
    check_file(path)
    assert input_dims(path) == [3, "height", "width"]
    assert_documented(path, documented)
    assert report["dynamic_axes"]["images"] == {1: "height", 2: "width"}
    checked = [tuple(c["image_size"]) for c in report["checks"]]
    assert checked == export.default_check_sizes(DETECTOR_EXPORT)
    session = onnx_session(path)
    counts = [
        assert_detections_equal(session, loaded.model, random_image(size, seed))
        for seed, size in enumerate([DETECTOR_EXPORT] + DETECTOR_SIZES)
    ]
    assert len(set(counts)) > 1, counts  # the number of detections is not fixed by the export


# ------------------------------------------------------------------ the tool


def test_tool_exports_any_size_lists_ops_and_records_checks(tmp_path, capsys):
    out = tmp_path / "export"
    argv = ["--config", MVIT_DEMO, "--format", "onnx", "--what", "backbone", "--dynamic-size"]
    argv += ["--image-size", "96x128", "--check-sizes", "128x128,100x84", "--list-ops"]
    argv += ["--output", str(out), "--device", "cpu", "--opts"] + MVIT_OPTS
    assert export.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "export.json").read_text())
    assert report["opset"] == 17 and report["input_shape"] == [1, 3, 96, 128]
    assert report["dynamic_axes"]["images"] == {"0": "batch", "2": "height", "3": "width"}
    # 128x128 with a batch of two images, 100x84 padded to 128x96 by the model's preprocessing
    shapes = [c["input_shape"] for c in report["checks"]]
    assert shapes == [[2, 3, 128, 128], [1, 3, 128, 96]]
    for check in report["checks"]:
        assert all(e <= 1e-3 for e in check["max_relative_difference"])
    operators = export.onnx_operators(report["file"])
    assert report["operators"] == operators and "Conv" in operators
    graph = onnx.load(report["file"]).graph
    assert sum(operators.values()) >= len(graph.node)
    for op, count in operators.items():
        assert f"  {op} {count}\n" in printed
    assert input_dims(report["file"]) == ["batch", 3, "height", "width"]


def test_tool_fails_on_a_file_that_does_not_serve_other_sizes(tmp_path, capsys, monkeypatch):
    """A file whose height and width are fixed (dynamic batch only) fails the tool's checks at
    the other sizes: an error naming the sizes, exit status 2, the report written."""
    monkeypatch.setattr(
        export,
        "dynamic_axes",
        lambda what, names: {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
    )
    argv = ["--config", MVIT_DEMO, "--format", "onnx", "--what", "backbone", "--dynamic-size"]
    argv += ["--image-size", "96x128", "--check-sizes", "128x128"]
    argv += ["--output", str(tmp_path), "--device", "cpu", "--opts"] + MVIT_OPTS
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert "does not give the eager outputs at every checked size" in err and "128x128" in err
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["checks"][0]["max_relative_difference"] is None


def test_tool_names_why_dynamo_cannot_export_the_detector(tmp_path, capsys):
    argv = ["--config", MVIT_DEMO, "--format", "onnx", "--exporter", "dynamo", "--what", "model"]
    argv += ["--dynamic-size", "--output", str(tmp_path), "--opts"] + MVIT_OPTS
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert "ImageList.from_tensors" in err and "GuardOnDataDependentSymNode" in err
    assert "--exporter legacy" in err
    assert not list(tmp_path.iterdir())


def test_default_check_sizes():
    assert export.default_check_sizes((96, 128)) == [(128, 96), (120, 120)]
    assert export.default_check_sizes((64, 64)) == [(64, 48), (72, 72)]


def test_tool_gives_the_dynamo_exporter_a_batch_of_two(tmp_path, monkeypatch):
    """torch.export fixes a dynamic size of 1: the tool's dynamo export with --dynamic-size
    gets a batch of two different images (the export itself is tested above; here it is
    replaced by a recorder)."""
    seen = {}

    def record(module, example, path, exporter, opset, names, dynamic):
        seen.update(shape=list(example.shape), exporter=exporter, dynamic=dynamic)
        seen["halves_differ"] = not torch.equal(example[0], example[1])
        raise export.ToolError("recorded")

    monkeypatch.setattr(export, "export_onnx", record)
    loaded = load_model(MVIT_DEMO, "", "cpu", MVIT_OPTS)
    with pytest.raises(export.ToolError, match="recorded"):
        export.export(
            loaded, "onnx", "backbone", (96, 128), str(tmp_path), "dynamo", 18, False, True
        )
    assert seen["shape"] == [2, 3, 96, 128] and seen["halves_differ"]
    assert seen["exporter"] == "dynamo" and seen["dynamic"]["images"] == {
        0: "batch",
        2: "height",
        3: "width",
    }
