"""mvit_det.Predictor: the same predictions as tools/predict.py and as the model run here on the
image resized by the test itself; every input kind, batches, config kinds, errors."""

import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mvit_det import Predictor, to_coco
from mvit_det.checkpoint import CheckpointNotFoundError, UnsafeCheckpointError
from mvit_det.engine import apply_overrides_checked
from mvit_det.model_zoo import get_config
from mvit_det.predictor import UnreadableImageError
from mvit_det.tools import predict
from mvit_det.tools.loading import ToolError, build_detector

from helpers import REPO, register_renumbered_shapes_val

pytestmark = pytest.mark.numerics

DEMO = os.path.join(REPO, "configs", "demo", "mask_rcnn_mvitv2_shapes.py")
DEMO_YAML = os.path.join(REPO, "configs", "yacs", "demo", "mask_rcnn_mvitv2_shapes.yaml")
# The test resize of these tests: the shorter side to 96 pixels, unless the longer side would
# then exceed 160, in which case the longer side to 160 (Detectron2's ResizeShortestEdge).
SHORT, LONGEST = 96, 160
# The demo config with a 4-block, 16-dim MViT and the resize above, as LazyConfig and yacs
# overrides.
TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    f"dataloader.test.mapper.augmentations.0.short_edge_length={SHORT}",
    f"dataloader.test.mapper.augmentations.0.max_size={LONGEST}",
]
TINY_YACS = [
    "MODEL.MVIT.EMBED_DIM", "16",
    "MODEL.MVIT.DEPTH", "4",
    "MODEL.MVIT.LAST_BLOCK_INDEXES", "[0, 1, 2, 3]",
    "INPUT.MIN_SIZE_TEST", str(SHORT),
    "INPUT.MAX_SIZE_TEST", str(LONGEST),
]  # fmt: skip


@pytest.fixture(scope="module")
def weights(shapes_datasets_root, tmp_path_factory) -> str:
    """Random weights of the tiny model, with the RPN objectness and class logits spread out (so
    that scores are far apart and the ranking of detections is stable), saved as a .pth."""
    torch.manual_seed(0)
    model = build_detector(DEMO, "cpu", TINY).model
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in (
                "proposal_generator.rpn_head.objectness_logits.weight",
                "roi_heads.box_predictor.cls_score.weight",
            ):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def predictor(weights) -> Predictor:
    return Predictor(DEMO, weights, opts=TINY)


@pytest.fixture(scope="module")
def pictures(shapes_datasets_root, tmp_path_factory) -> dict:
    """RGB images of three different sizes, cut from a shapes image, and PNG files of them."""
    rgb = cv2.cvtColor(
        cv2.imread(DatasetCatalog.get("shapes_val")[0]["file_name"]), cv2.COLOR_BGR2RGB
    )
    assert rgb.shape[0] >= 150 and rgb.shape[1] >= 150
    folder = tmp_path_factory.mktemp("pictures")
    crops = {"wide.png": rgb[:60, :150], "tall.png": rgb[:150, :100], "small.png": rgb[:70, :90]}
    for name, crop in crops.items():
        assert cv2.imwrite(str(folder / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return {str(folder / name): np.ascontiguousarray(crop) for name, crop in crops.items()}


def _assert_same(actual, expected, tol: float = 0.0) -> None:
    """Two images' instances are the same: size, classes, masks exactly; boxes and scores
    within ``tol`` (absolute)."""
    assert actual.image_size == expected.image_size
    assert len(actual) == len(expected) and len(expected) > 0
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=tol)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=tol * 100
    )
    differ = (actual.pred_masks != expected.pred_masks).sum().item()
    assert differ == 0 if tol == 0 else differ <= 2 * len(expected)


def _resized_by_the_test(rgb: np.ndarray) -> np.ndarray:
    """The test resize written out: scale so that the shorter side is SHORT, or the longer side
    LONGEST if that is smaller; sides rounded half up; bilinear, as Pillow does it."""
    h, w = rgb.shape[:2]
    scale = min(SHORT / min(h, w), LONGEST / max(h, w))
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))


def test_predictor_equals_the_model_on_the_image_resized_here(predictor, pictures):
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    apply_overrides_checked(cfg, TINY)
    assert cfg.dataloader.test.mapper.image_format == "RGB"  # the model takes RGB images
    sizes = []
    for path, rgb in pictures.items():
        resized = _resized_by_the_test(rgb)  # (H', W', 3)
        sizes.append(resized.shape[:2])
        image = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))  # (3, H', W')
        h, w = rgb.shape[:2]
        with torch.no_grad():
            expected = predictor.model([{"image": image, "height": h, "width": w}])[0]
        got = predictor(path)
        _assert_same(got, expected["instances"])
        assert got.image_size == (h, w) and got.pred_masks.shape[1:] == (h, w)  # original size
    # the longer side bound (wide: 60x150 -> 64x160) and the shorter one (small: 70x90 -> 96x123)
    assert sizes == [(64, 160), (144, 96), (96, 123)]


def test_predictor_records_equal_the_tools_json(predictor, weights, pictures, tmp_path):
    paths = list(pictures)
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--weights", weights, "--output", str(out), "--device", "cpu"]
    argv += ["--score-threshold", "0.0", "--batch-size", "2", "--no-vis", "--input", *paths]
    assert predict.main(argv + ["--opts"] + TINY) == 0
    records = json.loads((out / "predictions.json").read_text())
    images = json.loads((out / "images.json").read_text())
    assert [i["file_name"] for i in images] == paths
    ours = []
    for image_id, path in enumerate(paths):
        ours += predictor.to_coco(predictor(path), image_id, file_name=path)
    assert len(ours) == len(records) > 0
    assert ours == records
    # category ids of the shapes JSON (1, 2, 3), not class indexes
    with open(MetadataCatalog.get("shapes_val").json_file) as f:
        ids = sorted(c["id"] for c in json.load(f)["categories"])
    classes = predictor(paths[0]).pred_classes.tolist()
    assert [r["category_id"] for r in to_coco(predictor(paths[0]), 0, predictor.category_ids)] == [
        ids[c] for c in classes
    ]


def test_to_coco_maps_class_indexes_to_the_datasets_category_ids(weights, tmp_path, pictures):
    # A COCO JSON with category ids 11, 2, 7 (not in order in the file) as the test dataset,
    # not loaded before the predictor asks for its ids.
    register_renumbered_shapes_val("predictor_renumbered_val", tmp_path)
    opts = TINY + ["dataloader.test.dataset.names=predictor_renumbered_val"]
    predictor = Predictor(DEMO, weights, opts=opts)
    path = next(iter(pictures))
    instances = predictor(path)
    records = predictor.to_coco(instances, 5, file_name="x")
    by_class = [2, 7, 11]  # the ids in increasing order are classes 0, 1, 2
    assert [r["category_id"] for r in records] == [by_class[c] for c in instances.pred_classes]
    assert {r["image_id"] for r in records} == {5} and {r["file_name"] for r in records} == {"x"}
    boxes = instances.pred_boxes.tensor.numpy()  # (N, 4) XYXY -> XYWH
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose([r["bbox"] for r in records], xywh, rtol=1e-6)
    np.testing.assert_allclose([r["score"] for r in records], instances.scores.numpy(), rtol=1e-6)
    # without a mapping, the class indexes
    plain = to_coco(instances, 5)
    assert [r["category_id"] for r in plain] == instances.pred_classes.tolist()


def test_bgr_numpy_rgb_numpy_pil_and_path_agree(predictor, weights, pictures, tmp_path):
    path, rgb = next(iter(pictures.items()))
    expected = predictor(path)
    bgr = cv2.imread(path)  # (H, W, 3) BGR, as OpenCV reads it
    assert np.array_equal(bgr[:, :, ::-1], rgb)
    _assert_same(predictor(bgr), expected)  # input_format "BGR" by default
    _assert_same(predictor(Image.open(path)), expected)
    rgb_predictor = Predictor(DEMO, weights, opts=TINY, input_format="RGB")
    _assert_same(rgb_predictor(rgb), expected)
    # the channel order matters: RGB given as BGR predicts something else
    swapped = predictor(rgb)
    assert len(swapped) != len(expected) or not torch.equal(swapped.scores, expected.scores)

    # A PIL image in another mode is converted to RGB, a grayscale one to three equal channels.
    gray = Image.fromarray(rgb[:, :, 1])
    _assert_same(predictor(gray), rgb_predictor(np.repeat(rgb[:, :, 1:2], 3, axis=2)))

    # EXIF orientation 6 (rotate 90 degrees clockwise) is applied to files and PIL images alike.
    rotated_file = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(rotated_file, exif=exif, quality=95)
    from_file = predictor(str(rotated_file))
    h, w = rgb.shape[:2]
    assert from_file.image_size == (w, h)
    _assert_same(predictor(Image.open(rotated_file)), from_file)


def test_batch_equals_single_calls(predictor, pictures):
    (wide, wide_rgb), (tall, _), (small, _) = pictures.items()
    # two images of the same size (one model call of two) and two of other sizes, mixed kinds
    images = [wide, np.ascontiguousarray(wide_rgb[:, ::-1, ::-1]), Image.open(tall), small]
    calls = []
    hook = predictor.model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        batched = predictor.batch(images)
        assert sorted(calls) == [1, 1, 2]  # grouped by resized size
        calls.clear()
        singles = [predictor(image) for image in images]
        assert calls == [1, 1, 1, 1]
        calls.clear()
        in_ones = predictor.batch(images, batch_size=1)
        assert calls == [1, 1, 1, 1]
    finally:
        hook.remove()
    assert len(batched) == len(singles) == len(in_ones) == 4
    for one, other, alone in zip(batched, singles, in_ones):
        _assert_same(one, other, tol=1e-4)
        _assert_same(alone, other)
    # images of other sizes in one batch are predicted as alone: exactly the single results
    _assert_same(batched[2], singles[2])
    _assert_same(batched[3], singles[3])
    assert predictor.batch([]) == []


def test_config_objects_and_yacs_yaml_give_the_same_predictions(predictor, weights, pictures):
    path = next(iter(pictures))
    expected = predictor(path)
    cfg = get_config("demo/mask_rcnn_mvitv2_shapes.py")
    apply_overrides_checked(cfg, TINY[:3])
    from_object = Predictor(cfg, weights, opts=TINY[3:])
    _assert_same(from_object(path), expected)
    # the object is copied: the overrides given with it did not change it
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == 192
    from_yaml = Predictor(DEMO_YAML, weights, opts=TINY_YACS)
    _assert_same(from_yaml(path), expected)
    # by shipped name, without ".py"
    by_name = Predictor("demo/mask_rcnn_mvitv2_shapes", weights, opts=TINY)
    _assert_same(by_name(path), expected)


def test_score_threshold(weights, predictor, pictures):
    path = next(iter(pictures))
    everything = predictor(path)
    cut = float(everything.scores.median())
    kept = Predictor(DEMO, weights, opts=TINY, score_threshold=cut)(path)
    assert len(kept) == int((everything.scores >= cut).sum()) < len(everything)
    assert torch.equal(kept.scores, everything.scores[everything.scores >= cut])


def test_bad_images_are_refused_with_clear_errors(predictor, pictures, tmp_path):
    path, rgb = next(iter(pictures.items()))
    calls = []
    hook = predictor.model.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        with pytest.raises(UnreadableImageError, match="missing.png: not a readable image"):
            predictor(str(tmp_path / "missing.png"))
        damaged = tmp_path / "damaged.png"
        damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
        with pytest.raises(UnreadableImageError, match="damaged.png: not a readable image"):
            predictor(str(damaged))
        with pytest.raises(ValueError, match="dtype float32: give uint8"):
            predictor(rgb.astype(np.float32))
        with pytest.raises(ValueError, match="one channel"):
            predictor(rgb[:, :, 0])
        with pytest.raises(ValueError, match="channels-first"):
            predictor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        with pytest.raises(ValueError, match="4 channels.*alpha"):
            predictor(np.zeros((8, 8, 4), np.uint8))
        with pytest.raises(ValueError, match="empty"):
            predictor(np.zeros((0, 8, 3), np.uint8))
        with pytest.raises(TypeError, match="torch.Tensor"):
            predictor(torch.zeros(8, 8, 3, dtype=torch.uint8))
        with pytest.raises(TypeError, match="sequence of images"):
            predictor.batch(path)
        # a bad image anywhere in a batch: named by its position, and nothing is predicted
        with pytest.raises(ValueError, match=r"^images\[1\]: numpy image of dtype float64"):
            predictor.batch([path, rgb / 255.0, path])
        assert calls == []
    finally:
        hook.remove()
    limited = Predictor.from_loaded(predictor.loaded, max_image_pixels=100)
    h, w = rgb.shape[:2]
    with pytest.raises(UnreadableImageError, match=f"{w}x{h} is {w * h} pixels, more than max"):
        limited(path)
    with pytest.raises(ValueError, match="input_format='GBR'"):
        Predictor.from_loaded(predictor.loaded, input_format="GBR")


def test_bad_configs_and_weights_are_refused(weights, predictor, pictures, tmp_path):
    with pytest.raises(ToolError, match="mask_rcnn_mvitv2_t.py") as info:
        Predictor("mask_rcnn_mvitv2_x.py", weights)
    assert "neither a file nor a shipped config" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="no.pth"):
        Predictor(DEMO, str(tmp_path / "no.pth"), opts=TINY)
    # weights that pickle a Python object (a numpy masked array) load only when trusted
    state = torch.load(weights, weights_only=True)["model"]
    data = {"model": {k: v.numpy() for k, v in state.items()}}
    name = "roi_heads.box_predictor.cls_score.bias"
    data["model"][name] = np.ma.masked_array(data["model"][name])
    with_object = tmp_path / "with_object.pkl"
    with open(with_object, "wb") as f:
        pickle.dump(data, f, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="numpy.ma.*trust_checkpoint=True"):
        Predictor(DEMO, str(with_object), opts=TINY)
    trusted = Predictor(DEMO, str(with_object), opts=TINY, trust_checkpoint=True)
    path = next(iter(pictures))
    _assert_same(trusted(path), predictor(path))
