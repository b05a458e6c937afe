"""tools/predict.py, evaluate.py and analyze.py on generated images with a briefly trained model."""

import json
import os
import pickle
import struct
import warnings
import zlib

import cv2
import numpy as np
import PIL.ImageFile
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from pycocotools import mask as mask_util

from mvit_det import MViT, build_mvit_fpn
from mvit_det.analysis import flop_count_by_operator
from mvit_det.data import register_coco_dataset, register_shapes_dataset
from mvit_det.engine import apply_overrides_checked
from mvit_det.engine.train_net import build_argument_parser
from mvit_det.engine.train_net import main as train_main
from mvit_det.model_zoo import get_config
from mvit_det.tools import analyze, convert_checkpoint, evaluate, export, predict
from mvit_det.tools.loading import load_model

from helpers import REPO, register_renumbered_shapes_val

DEMO = os.path.join(REPO, "configs", "demo", "mask_rcnn_mvitv2_shapes.py")
DEMO_YAML = os.path.join(REPO, "configs", "yacs", "demo", "mask_rcnn_mvitv2_shapes.yaml")
# The demo config with a 4-block, 16-dim MViT at 128 px, as LazyConfig and yacs overrides.
TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
]
TINY_YACS = [
    "MODEL.MVIT.EMBED_DIM", "16",
    "MODEL.MVIT.DEPTH", "4",
    "MODEL.MVIT.LAST_BLOCK_INDEXES", "[0, 1, 2, 3]",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_weights(shapes_datasets_root, tmp_path_factory):
    """The tiny demo model after 4 training iterations, saved by the training tool."""
    out = tmp_path_factory.mktemp("trained")
    args = build_argument_parser().parse_args(
        ["--config-file", DEMO]
        + TINY
        + [
            f"train.output_dir={out}",
            "train.max_iter=4",
            "train.eval_period=0",
            "lr_multiplier.scheduler.milestones=[2,3]",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.mapper.augmentations.1.target_height=128",
            "dataloader.train.mapper.augmentations.1.target_width=128",
            "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
            "model.roi_heads.batch_size_per_image=32",
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here
        train_main(args)
    path = out / "model_final.pth"
    assert path.is_file()
    return str(path)


def _write_video(path, frames):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _video_frames_rgb(path) -> list:
    """The frames of a video as decoded by OpenCV, turned from BGR into RGB here."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()  # (H, W, 3) BGR
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    capture.release()
    return frames


def _category_ids_by_class(json_file) -> list:
    """Contiguous class index -> category id of a COCO JSON, as training reads it: the ids in
    increasing order are classes 0, 1, ..."""
    with open(json_file) as f:
        return sorted(c["id"] for c in json.load(f)["categories"])


def _assert_records_are_the_models(records, loaded, image_rgb, category_ids) -> int:
    """The COCO result records of one image equal the model's own output on the RGB image
    (boxes as XYWH, dataset category ids, scores, decoded RLE masks); returns their number."""
    assert loaded.input_format == "RGB"
    with torch.no_grad():
        expected = loaded.model([loaded.model_input(image_rgb)])[0]["instances"]
    assert len(records) == len(expected)
    if not records:
        return 0
    boxes = expected.pred_boxes.tensor.numpy()  # (N, 4) XYXY
    np.testing.assert_allclose(
        [r["bbox"] for r in records],
        np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1),
        atol=1e-3,
    )
    assert [r["category_id"] for r in records] == [
        category_ids[int(c)] for c in expected.pred_classes
    ]
    np.testing.assert_allclose([r["score"] for r in records], expected.scores.numpy(), rtol=1e-5)
    for record, mask in zip(records, expected.pred_masks.numpy()):  # (H, W) bool each
        rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask)
    return len(records)


def test_predict_images_folder_glob_and_video(trained_weights, shapes_datasets_root, tmp_path):
    files = [r["file_name"] for r in DatasetCatalog.get("shapes_val")]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, name in enumerate(files[:2]):
        (folder / f"own_{i}.png").write_bytes(open(name, "rb").read())
    frames = [detection_utils.read_image(f, format="RGB")[:96, :128] for f in files[:3]]
    _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--weights", trained_weights, "--output", str(out), "--device", "cpu"]
    argv += ["--score-threshold", "0.0", "--batch-size", "2"]
    argv += ["--input", files[2], str(folder), str(tmp_path / "folder" / "*.png")]
    argv += [str(tmp_path / "clip.mp4"), "--opts"] + TINY
    # As in a new process: the metadata has no category ids until the dataset is loaded.
    register_shapes_dataset(os.path.join(shapes_datasets_root, "mvit_shapes"))
    metadata = MetadataCatalog.get("shapes_val")
    assert metadata.get("thing_dataset_id_to_contiguous_id", None) is None
    assert predict.main(argv) == 0

    images = json.loads((out / "images.json").read_text())
    records = json.loads((out / "predictions.json").read_text())
    # the glob repeats the folder's files: each input is predicted once
    stills = [files[2], str(folder / "own_0.png"), str(folder / "own_1.png")]
    assert [i["file_name"] for i in images] == stills + [str(tmp_path / "clip.mp4")] * 3
    assert [i["id"] for i in images] == list(range(6))
    assert [i.get("frame") for i in images[3:]] == [0, 1, 2]
    # outputs named after the input file, extension kept; images.json maps input -> output
    outputs = [os.path.basename(still) + ".png" for still in stills] + ["clip.mp4.mp4"] * 3
    assert [i["output"] for i in images] == outputs
    for still in stills:
        png = cv2.imread(str(out / (os.path.basename(still) + ".png")))
        assert png.shape == cv2.imread(still).shape  # drawn at the image's own size
    capture = cv2.VideoCapture(str(out / "clip.mp4.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        128,
        96,
    )
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no partial files left

    # Every record is the model's own prediction on its image or frame, in RGB, in COCO result
    # format with the dataset's category ids (1, 2, 3 in the shapes JSON, not class indexes).
    loaded = load_model(DEMO, trained_weights, "cpu", TINY)
    category_ids = _category_ids_by_class(metadata.json_file)
    assert category_ids == [1, 2, 3]
    pictures = [detection_utils.read_image(still, format="RGB") for still in stills]
    pictures += _video_frames_rgb(tmp_path / "clip.mp4")
    assert len(pictures) == len(images)
    counts = []
    for entry, picture in zip(images, pictures):
        assert (entry["height"], entry["width"]) == picture.shape[:2]
        own = [r for r in records if r["image_id"] == entry["id"]]
        assert all(r["file_name"] == entry["file_name"] for r in own)
        assert all(r.get("frame") == entry.get("frame") for r in own)
        counts.append(_assert_records_are_the_models(own, loaded, picture, category_ids))
    assert sum(counts) == len(records)
    assert all(counts), f"score threshold 0 keeps every detection: {counts} per image"


def test_predict_category_ids_of_a_coco_json_dataset(trained_weights, tmp_path):
    # A COCO JSON whose category ids are neither 0..K-1 nor in increasing order in the file,
    # registered as the config's test dataset and not loaded before the tool runs.
    json_file, data = register_renumbered_shapes_val("predict_renumbered_val", tmp_path)
    val = MetadataCatalog.get("shapes_val")
    image = os.path.join(val.image_root, data["images"][0]["file_name"])
    opts = TINY + ["dataloader.test.dataset.names=predict_renumbered_val"]
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--weights", trained_weights, "--input", image, "--no-vis"]
    argv += ["--output", str(out), "--device", "cpu", "--score-threshold", "0.0", "--opts"]
    assert predict.main(argv + opts) == 0
    records = json.loads((out / "predictions.json").read_text())
    category_ids = _category_ids_by_class(json_file)
    assert category_ids == [2, 7, 11]
    loaded = load_model(DEMO, trained_weights, "cpu", opts)
    picture = detection_utils.read_image(image, format="RGB")
    assert _assert_records_are_the_models(records, loaded, picture, category_ids) > 0
    assert MetadataCatalog.get("predict_renumbered_val").thing_classes == [
        c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])
    ]  # the drawings' class names, in class order


def test_predict_threshold_and_errors(trained_weights, tmp_path, capsys):
    image = DatasetCatalog.get("shapes_val")[0]["file_name"]
    base = ["--config", DEMO, "--weights", trained_weights, "--device", "cpu"]
    out = tmp_path / "high"
    argv = base + ["--input", image, "--output", str(out), "--score-threshold", "1.0", "--no-vis"]
    assert predict.main(argv + ["--opts"] + TINY) == 0
    assert json.loads((out / "predictions.json").read_text()) == []
    assert not list(out.glob("*.png"))

    assert predict.main(base + ["--input", str(tmp_path / "nothing*.jpg")]) == 2
    assert "matches no image or video" in capsys.readouterr().err
    missing = base[:2] + ["--weights", str(tmp_path / "no.pth"), "--input", image, "--opts"]
    missing += TINY
    assert predict.main(missing) == 2
    assert "no.pth" in capsys.readouterr().err
    assert predict.main(["--config", "nope.py", "--weights", "w", "--input", image]) == 2
    assert "mask_rcnn_mvitv2_t.py" in capsys.readouterr().err  # lists the shipped configs


def test_evaluate_table_lazy_and_yacs_agree(trained_weights, tmp_path, capsys):
    output = tmp_path / "eval.json"
    argv = ["--dataset", "shapes_val", "--device", "cpu", "--output", str(output)]
    argv += ["--model", DEMO, trained_weights] + TINY
    argv += ["--model", DEMO_YAML, trained_weights] + TINY_YACS
    assert evaluate.main(argv) == 0
    rows = json.loads(output.read_text())
    assert [r["config"] for r in rows] == [DEMO, DEMO_YAML]
    lazy, yacs = rows
    assert lazy["images"] == len(DatasetCatalog.get("shapes_val")) and lazy["ms_per_image"] > 0
    for task in ("bbox", "segm"):
        assert 0.0 <= lazy["metrics"][task]["AP"] <= 100.0
        # the yacs config builds the same model with the same test resize: the same AP
        assert yacs["metrics"][task] == pytest.approx(lazy["metrics"][task], abs=1e-6, nan_ok=True)
    table = (tmp_path / "eval.md").read_text()
    assert f"{lazy['metrics']['bbox']['AP']:.1f}" in table and "ms / image" in table
    assert table.strip() in capsys.readouterr().out

    bad = ["--output", str(tmp_path / "x.json"), "--model", DEMO]
    assert evaluate.main(bad) == 2


def test_fused_and_explicit_attention_flops_agree():
    # Detectron2's FlopCountAnalysis (tools/analyze_model.py) with relative positions and windows
    # cut by the border: the fused op counts as the explicit core's two products.
    flops = {}
    for attn_impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        bottom_up = MViT(
            embed_dim=16,
            depth=5,
            num_heads=1,
            last_block_indexes=(0, 2, 3, 4),
            adaptive_window_size=16,
            attn_impl=attn_impl,
        )
        backbone = build_mvit_fpn(bottom_up, out_channels=32).eval()
        flops[attn_impl] = flop_count_by_operator(backbone, (torch.randn(1, 3, 96, 160),))
    eager, sdpa = flops["eager"], flops["sdpa"]
    assert sdpa["scaled_dot_product_attention"] == pytest.approx(eager["matmul"], rel=1e-12)
    assert "matmul" not in sdpa and "scaled_dot_product_attention" not in eager
    assert sdpa["total"] == pytest.approx(eager["total"], rel=1e-12)


def test_sdpa_handle_is_registered_with_fvcore():
    from fvcore.nn import FlopCountAnalysis

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 50, 16), torch.randn(2, 3, 20, 16), torch.randn(2, 3, 20, 8)
    analysis = FlopCountAnalysis(Attention(), (q, k, v))  # no handle set by hand
    analysis.unsupported_ops_warnings(False)
    # q k^T: 2*3*50*20*16 multiply-adds, attn v: 2*3*50*20*8
    assert analysis.total() == 2 * 3 * 50 * 20 * (16 + 8)


def test_analyze_tool_reports_per_module(tmp_path, capsys):
    output = tmp_path / "analysis.json"
    argv = ["--config", DEMO, "--device", "cpu", "--image-size", "96x128", "--backbone"]
    argv += ["--tasks", "flop", "parameter", "activation", "--output", str(output), "--opts"]
    argv += TINY
    assert analyze.main(argv) == 0
    report = json.loads(output.read_text())
    loaded = load_model(DEMO, "", "cpu", TINY)
    backbone = loaded.model.backbone
    assert report["parameter"]["total_m"] * 1e6 == pytest.approx(
        sum(p.numel() for p in backbone.parameters())
    )
    blocks = report["parameter"]["by_module_m"]
    assert blocks["bottom_up.blocks.0"] * 1e6 == pytest.approx(
        sum(p.numel() for p in backbone.bottom_up.blocks[0].parameters())
    )
    flops = report["flop"]
    assert flops["by_operator_gflops"]["scaled_dot_product_attention"] > 0
    assert flops["total_gflops"] == pytest.approx(sum(flops["by_operator_gflops"].values()))
    # 96x128 is resized to 96x128 (longer side 128) and padded to multiples of 32 (96x128)
    image = torch.zeros(1, 3, 96, 128)
    expected = flop_count_by_operator(backbone, (image,))["total"]
    assert flops["total_gflops"] == pytest.approx(expected)
    assert (
        report["activation"]["total_m"] > 0 and "bottom_up" in report["activation"]["by_module_m"]
    )
    out = capsys.readouterr().out
    assert "total GFLOPs" in out and "bottom_up.blocks.0" in out


def test_own_model_example_of_the_docs():
    text = (REPO / "docs" / "tools.md").read_text()
    section = text.split("### The backbone in your own Detectron2 model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/tools.md", "exec"), namespace)
    model = namespace["model"].eval()
    assert type(model).__name__ == "RetinaNet"
    assert isinstance(model.backbone.bottom_up, MViT) and len(model.backbone.bottom_up.blocks) == 10
    strides = {k: v.stride for k, v in model.backbone.output_shape().items()}
    assert strides == {f"p{i}": 2**i for i in range(3, 8)}
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 96), "height": 64, "width": 96}])
    assert out[0]["instances"].image_size == (64, 96)


def _png_header_only(width: int, height: int) -> bytes:
    """A small PNG file whose header announces a width x height RGB image (a few rows of data
    follow: a decoder would allocate the whole image before finding out)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def test_predict_skips_bad_inputs_and_keeps_output_names_apart(
    trained_weights, tmp_path, capsys, monkeypatch
):
    picture = detection_utils.read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], "RGB")
    folder, other = tmp_path / "in", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    # Same file names with other extensions, and in another folder, each of its own size.
    crops = {folder / "a.jpg": picture[:96, :112], folder / "a.png": picture[:80, :120]}
    crops[other / "a.png"] = picture[:64, :72]
    for path, crop in crops.items():
        assert cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    _write_video(folder / "clip.avi", [picture[:64, :96]] * 2)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "bomb.png").write_bytes(_png_header_only(12000, 12000))  # 144 M pixels
    os.symlink("loop.png", folder / "loop.png")  # a link to itself
    os.symlink("a.png", folder / "same_as_a.png")  # a second name of a.png: predicted once
    (folder / "broken.mp4").write_bytes(os.urandom(300))

    decoded = []  # (width, height) of every image Pillow decodes
    original_load = PIL.ImageFile.ImageFile.load

    def load(image):
        decoded.append(image.size)
        return original_load(image)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", load)
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--weights", trained_weights, "--device", "cpu", "--output", str(out)]
    argv += ["--input", str(folder), str(other), "--opts"] + TINY
    assert predict.main(argv) == 1  # some inputs skipped, the others predicted

    err = capsys.readouterr().err
    reasons = {
        "bad.png": "not a readable image",
        "truncated.jpg": "not a readable image",
        "bomb.png": "12000x12000 is 144000000 pixels, more than --max-image-pixels 89478485",
        "loop.png": "Too many levels of symbolic links",
        "broken.mp4": "cannot open the video",
    }
    for name, reason in reasons.items():
        lines = [line for line in err.splitlines() if f"skipped {folder / name}: " in line]
        assert len(lines) == 1 and lines[0].startswith("warning: ") and reason in lines[0], name
    assert "5 of 9 inputs skipped" in err
    assert decoded and (12000, 12000) not in decoded  # the bomb was never decoded

    images = json.loads((out / "images.json").read_text())
    records = json.loads((out / "predictions.json").read_text())
    expected = [
        (str(folder / "a.jpg"), "a.jpg.png", (96, 112)),
        (str(folder / "a.png"), "a.png.png", (80, 120)),
        (str(folder / "clip.avi"), "clip.avi.mp4", (64, 96)),
        (str(folder / "clip.avi"), "clip.avi.mp4", (64, 96)),
        (str(other / "a.png"), "a.png_2.png", (64, 72)),
    ]
    assert [(i["file_name"], i["output"], (i["height"], i["width"])) for i in images] == [
        (f, o, s) for f, o, s in expected if not f.endswith(".avi")
    ] + [(f, o, s) for f, o, s in expected if f.endswith(".avi")]
    assert [i["id"] for i in images] == list(range(5))
    assert {r["image_id"] for r in records} <= {i["id"] for i in images}
    assert sorted(os.listdir(out)) == sorted(
        ["a.jpg.png", "a.png.png", "a.png_2.png", "clip.avi.mp4", "images.json", "predictions.json"]
    )
    for _, output, size in expected:  # each drawing has its own input's size: none overwritten
        if output.endswith(".png"):
            assert cv2.imread(str(out / output)).shape[:2] == size
    capture = cv2.VideoCapture(str(out / "clip.avi.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2


def test_predict_max_image_pixels(trained_weights, tmp_path, capsys):
    picture = detection_utils.read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], "RGB")
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    cv2.imwrite(str(big), picture[:80, :100])  # 8000 pixels
    cv2.imwrite(str(small), picture[:60, :70])  # 4200 pixels
    base = ["--config", DEMO, "--weights", trained_weights, "--device", "cpu", "--no-vis"]
    base += ["--input", str(big), str(small)]
    out = tmp_path / "limited"
    argv = base + ["--output", str(out), "--max-image-pixels", "6000", "--opts"] + TINY
    assert predict.main(argv) == 1
    assert f"skipped {big}: 100x80 is 8000 pixels, more than --max-image-pixels 6000" in (
        capsys.readouterr().err
    )
    assert [i["file_name"] for i in json.loads((out / "images.json").read_text())] == [str(small)]
    out = tmp_path / "unlimited"
    argv = base + ["--output", str(out), "--max-image-pixels", "0", "--opts"] + TINY
    assert predict.main(argv) == 0
    images = json.loads((out / "images.json").read_text())
    assert [i["file_name"] for i in images] == [str(big), str(small)]
    assert all("output" not in i for i in images)  # --no-vis: no drawing written
    with pytest.raises(SystemExit) as info:
        predict.parse_args(base + ["--max-image-pixels", "-1"])
    assert info.value.code == 2 and "--max-image-pixels must be >= 0" in capsys.readouterr().err


# The tiny demo model as a LazyConfig file of its own (the converter takes no overrides).
TINY_CONFIG = f"""
from mvit_det.engine import apply_overrides_checked
from mvit_det.model_zoo import get_config

_cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
apply_overrides_checked(_cfg, {TINY!r})
model, dataloader = _cfg.model, _cfg.dataloader
"""


def _one_image_dataset(tmp_path) -> str:
    """The first image of shapes_val, registered alone as a COCO dataset (a quick evaluation)."""
    val = MetadataCatalog.get("shapes_val")
    with open(val.json_file) as f:
        data = json.load(f)
    first = data["images"][0]["id"]
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == first]
    json_file = tmp_path / "one_image.json"
    json_file.write_text(json.dumps(data))
    name = f"tools_one_image_{abs(hash(str(tmp_path)))}"
    register_coco_dataset(name, str(json_file), val.image_root)
    return name


def _tool_runs(config: str, image: str, out, dataset: str = "shapes_val") -> dict:
    """Each tool that reads weights, as a function of (weights, extra options) -> exit status."""
    common = ["--config", config, "--device", "cpu"]
    return {
        "predict": lambda w, extra: predict.main(
            common + ["--weights", w, "--input", image, "--output", str(out / "predict")]
            + ["--no-vis", "--score-threshold", "0.0"] + extra
        ),
        "evaluate": lambda w, extra: evaluate.main(
            ["--dataset", dataset, "--device", "cpu", "--warmup", "0"]
            + ["--output", str(out / "evaluate.json")] + extra + ["--model", config, w]
        ),
        "export": lambda w, extra: export.main(
            common + ["--weights", w, "--what", "mvit", "--image-size", "32x32"]
            + ["--output", str(out / "export")] + extra
        ),
        "analyze": lambda w, extra: analyze.main(
            common + ["--weights", w, "--tasks", "parameter", "--backbone"] + extra
        ),
        "convert_checkpoint": lambda w, extra: convert_checkpoint.main(
            [w, str(out / "converted_again.pkl"), "--model", config] + extra
        ),
    }  # fmt: skip


def test_tools_read_the_converters_pkl_and_refuse_pickled_objects(
    trained_weights, tmp_path, capsys
):
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    converted = tmp_path / "converted.pkl"
    assert convert_checkpoint.main([trained_weights, str(converted), "--model", str(config)]) == 0
    # The same weights with one of them pickled as a Python object outside plain data (a numpy
    # masked array: harmless here, but its unpickling calls numpy.ma's own reconstructor).
    with open(converted, "rb") as f:
        data = pickle.load(f)
    name = "roi_heads.box_predictor.cls_score.bias"
    data["model"][name] = np.ma.masked_array(data["model"][name])
    with_object = tmp_path / "with_object.pkl"
    with open(with_object, "wb") as f:
        pickle.dump(data, f, protocol=4)
    image = DatasetCatalog.get("shapes_val")[0]["file_name"]
    dataset = _one_image_dataset(tmp_path)
    capsys.readouterr()
    for tool, run in _tool_runs(str(config), image, tmp_path, dataset).items():
        assert run(str(converted), []) == 0, tool  # the converter's output, no trust needed
        captured = capsys.readouterr()
        assert "error" not in captured.err, (tool, captured.err)
        assert run(str(with_object), []) == 2, tool
        err = capsys.readouterr().err
        assert "numpy.ma" in err and "--trust-checkpoint" in err, (tool, err)
        assert run(str(with_object), ["--trust-checkpoint"]) == 0, tool
        capsys.readouterr()
    # predict's records from the .pkl are those of the trained .pth model
    records = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    loaded = load_model(DEMO, trained_weights, "cpu", TINY)
    category_ids = _category_ids_by_class(MetadataCatalog.get("shapes_val").json_file)
    picture = detection_utils.read_image(image, format="RGB")
    assert _assert_records_are_the_models(records, loaded, picture, category_ids) > 0


def test_tools_read_yaml_configs_safely(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    run_code = f"!!python/object/apply:os.makedirs [{str(marker)!r}]"
    # A yacs YAML on the shipped demo YAML, and a LazyConfig YAML as a training run saves it
    # (LazyConfig.save writes tuples, ShapeSpecs and functools.partial(LayerNorm, eps=...)).
    yacs = tmp_path / "yacs.yaml"
    yacs.write_text(f"_BASE_: {DEMO_YAML}\nMODEL:\n  MVIT:\n    EMBED_DIM: 16\n")
    lazy_cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    apply_overrides_checked(lazy_cfg, TINY)
    lazy = tmp_path / "config.yaml"
    LazyConfig.save(lazy_cfg, str(lazy))
    assert "!!python/object/apply:functools.partial" in lazy.read_text()
    evil_yacs, evil_lazy = tmp_path / "evil_yacs.yaml", tmp_path / "evil_lazy.yaml"
    evil_yacs.write_text(yacs.read_text() + f"  DEVICE: {run_code}\n")
    evil_lazy.write_text(lazy.read_text() + f"extra: {run_code}\n")
    trusted_yacs = tmp_path / "trusted_yacs.yaml"
    trusted_yacs.write_text(
        yacs.read_text() + "  DEVICE: !!python/object/apply:builtins.str [cpu]\n"
    )

    image = DatasetCatalog.get("shapes_val")[0]["file_name"]
    weights = tmp_path / "w.pth"
    torch.save({"model": load_model(DEMO, "", "cpu", TINY).model.state_dict()}, weights)
    for evil in (evil_yacs, evil_lazy):
        for tool, run in _tool_runs(str(evil), image, tmp_path).items():
            if tool == "convert_checkpoint" and evil == evil_yacs:
                continue  # the converter's --model is a LazyConfig
            assert run(str(weights), []) == 2, (tool, evil.name)
            err = capsys.readouterr().err
            assert "!!python/object/apply:os.makedirs" in err and "--trust-config" in err, tool
            assert not marker.exists(), tool
    # safe YAML loads: the LazyConfig YAML gives the .py config's model
    argv = ["--device", "cpu", "--tasks", "parameter", "--output"]
    assert analyze.main(["--config", str(lazy)] + argv + [str(tmp_path / "yaml.json")]) == 0
    assert (
        analyze.main(["--config", DEMO] + argv + [str(tmp_path / "py.json"), "--opts"] + TINY) == 0
    )
    from_yaml = json.loads((tmp_path / "yaml.json").read_text())["parameter"]["by_module_m"]
    from_py = json.loads((tmp_path / "py.json").read_text())["parameter"]["by_module_m"]
    assert from_yaml == from_py
    # the explicit opt-in reads the tags in full
    assert analyze.main(["--config", str(trusted_yacs), "--tasks", "parameter"]) == 2
    assert "--trust-config" in capsys.readouterr().err
    trusted = ["--config", str(trusted_yacs), "--tasks", "parameter", "--trust-config", "--opts"]
    assert analyze.main(trusted + TINY_YACS) == 0


def test_analyze_image_size_is_the_model_input(tmp_path, capsys):
    """--image-size HxW is the input size exactly (no test resize: longer side 128 here); without
    it, a 480x640 image goes through the test resize. The JSON records both sizes."""
    base = ["--config", DEMO, "--device", "cpu", "--backbone", "--tasks", "flop"]
    for requested, used, padded in [
        (None, [96, 128], (96, 128)),  # 480x640 scaled by 128 / 640
        ([100, 150], [100, 150], (128, 160)),  # padded to multiples of 32 by the model
    ]:
        output = tmp_path / "analysis.json"
        size = ["--image-size", "{}x{}".format(*requested)] if requested else []
        assert analyze.main(base + size + ["--output", str(output), "--opts"] + TINY) == 0
        report = json.loads(output.read_text())
        assert report["requested_image_size"] == requested
        assert report["input_size"] == used and report["input_shape"] == [1, 3, *padded]
        assert f"input: {used[0]}x{used[1]} image" in capsys.readouterr().out
