"""Synthetic shapes generator, dataset registration and errors, and the LSJ pipeline."""

import hashlib
import json
import os
from itertools import combinations

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_utils

from helpers import REPO, TINY_SIZES
from mvit_det.data import (
    SHAPE_CLASSES,
    DatasetError,
    DatasetFilesNotFoundError,
    InvalidDatasetError,
    UnknownDatasetError,
    check_coco_dataset,
    generate_shapes_dataset,
    prepare_datasets,
    register_coco_dataset,
)
from mvit_det.data import datasets
from mvit_det.data.shapes import shapes_dataset_files


def _digest(root: str) -> str:
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_generator_is_deterministic_and_idempotent(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert generate_shapes_dataset(a, TINY_SIZES) is True
    assert generate_shapes_dataset(b, TINY_SIZES) is True
    assert _digest(a) == _digest(b)
    assert generate_shapes_dataset(a, TINY_SIZES) is False  # already there: untouched
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".shapes_tmp_")]
    with pytest.raises(ValueError, match="Unknown split"):
        generate_shapes_dataset(str(tmp_path / "c"), {"test": 2})


def test_generated_annotations_are_exact_coco(shapes_datasets_root):
    root = os.path.join(shapes_datasets_root, "mvit_shapes")
    for split, num in TINY_SIZES.items():
        json_file, image_root = shapes_dataset_files(root, split)
        with open(json_file) as f:
            coco = json.load(f)
        assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
        assert len(coco["images"]) == num
        images = {im["id"]: im for im in coco["images"]}
        per_image = {i: [] for i in images}
        for ann in coco["annotations"]:
            per_image[ann["image_id"]].append(ann)
        for image_id, anns in per_image.items():
            im = images[image_id]
            pixels = cv2.imread(os.path.join(image_root, im["file_name"]))
            assert pixels.shape == (im["height"], im["width"], 3)
            assert 1 <= len(anns) <= 5
            masks = []
            for ann in anns:
                poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
                x0, y0 = poly.min(axis=0)
                x1, y1 = poly.max(axis=0)
                np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.02)
                rle = mask_utils.frPyObjects(ann["segmentation"], im["height"], im["width"])
                mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
                assert abs(mask.sum() - ann["area"]) < 0.1 * ann["area"] + 30
                # The shape is drawn in one colour that differs from its surroundings.
                inside = pixels[mask].astype(float)
                assert inside.std(axis=0).max() < 25
                masks.append(mask)
            for m1, m2 in combinations(masks, 2):
                assert not (m1 & m2).any(), "objects must not overlap"


def test_shapes_are_registered_with_metadata(shapes_datasets_root):
    records = DatasetCatalog.get("shapes_val")
    assert len(records) == TINY_SIZES["val"]
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == list(SHAPE_CLASSES)
    assert meta.json_file.startswith(shapes_datasets_root)
    ann = records[0]["annotations"][0]
    assert ann["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= ann["category_id"] < 3
    prepare_datasets(["shapes_train", "shapes_val"])  # present: no error


def test_custom_coco_dataset_registration(shapes_datasets_root):
    json_file, image_root = shapes_dataset_files(
        os.path.join(shapes_datasets_root, "mvit_shapes"), "val"
    )
    register_coco_dataset("test_custom_ds", json_file, image_root)
    register_coco_dataset("test_custom_ds", json_file, image_root)  # same files: no-op
    assert len(DatasetCatalog.get("test_custom_ds")) == TINY_SIZES["val"]
    prepare_datasets(["test_custom_ds"])
    with pytest.raises(DatasetError, match="already registered"):
        register_coco_dataset("test_custom_ds", json_file, os.path.dirname(image_root))
    with pytest.raises(DatasetFilesNotFoundError, match="nope.json"):
        register_coco_dataset("test_missing_ds", "/nonexistent/nope.json", image_root)


def _copy_of_shapes_val(shapes_datasets_root, tmp_path):
    """The shapes validation annotations as a dict, and a writer of edited copies."""
    json_file, image_root = shapes_dataset_files(
        os.path.join(shapes_datasets_root, "mvit_shapes"), "val"
    )
    with open(json_file) as f:
        data = json.load(f)

    def write(edited):
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(edited))
        return str(path)

    return data, image_root, write


def test_coco_dataset_content_is_checked(shapes_datasets_root, tmp_path):
    data, image_root, write = _copy_of_shapes_val(shapes_datasets_root, tmp_path)
    check_coco_dataset("ok", write(data), image_root, num_classes=3, for_training=True)

    def fails(edited, message, **options):
        with pytest.raises(InvalidDatasetError, match=message):
            check_coco_dataset("ds", write(edited), image_root, **options)

    fails(data, r"'ds' has 3 categories \(circle, triangle, square\).*num_classes=3", num_classes=2)
    fails({**data, "annotations": []}, "has no annotations", for_training=True)
    missing = dict(data, images=[dict(data["images"][0], file_name="gone.jpg")] + data["images"])
    fails(missing, r"1 of the 5 images .*\(1 missing: .*gone.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    empty = dict(data, images=[dict(data["images"][0], file_name=str(tmp_path / "empty.jpg"))])
    fails(empty, r"empty \(0 bytes\): .*empty.jpg")
    first = data["annotations"][0]
    no_mask = dict(data, annotations=[dict(first, segmentation=[])] + data["annotations"][1:])
    check_coco_dataset("ds", write(no_mask), image_root)  # boxes only: fine
    fails(no_mask, rf"1 annotations .* empty or missing segmentation.*ids {first['id']}\)",
          check_masks=True)  # fmt: skip
    stray = dict(data, annotations=[dict(first, category_id=99)])
    fails(stray, "category_id that is not among its categories")
    (tmp_path / "broken.json").write_text('{"images": [}')
    with pytest.raises(InvalidDatasetError, match=r"broken.json' is not valid JSON: .*line 1"):
        check_coco_dataset("ds", str(tmp_path / "broken.json"), image_root)


def test_special_files_and_ids_are_refused(shapes_datasets_root, tmp_path, monkeypatch):
    """FIFOs and devices are refused without being read (that would block, or never end), and
    image ids must be integers."""
    data, image_root, write = _copy_of_shapes_val(shapes_datasets_root, tmp_path)
    os.mkfifo(tmp_path / "pipe")
    opened = []
    monkeypatch.setattr(datasets, "open", lambda *args, **kw: opened.append(args), raising=False)
    with pytest.raises(InvalidDatasetError, match=r"'.*pipe' is a FIFO \(named pipe\), not a reg"):
        register_coco_dataset("test_pipe_ds", str(tmp_path / "pipe"), image_root)
    with pytest.raises(InvalidDatasetError, match="the image root '/dev/null' is a device, not a"):
        register_coco_dataset("test_null_root_ds", write(data), "/dev/null")
    assert opened == []
    monkeypatch.undo()

    pipe_image = dict(data, images=[dict(data["images"][0], file_name=str(tmp_path / "pipe"))])
    with pytest.raises(InvalidDatasetError, match=r"\(1 not regular files: .*pipe\)"):
        check_coco_dataset("ds", write(pipe_image), image_root)
    text_refs = dict(data, annotations=[dict(data["annotations"][0], image_id="7")])
    with pytest.raises(InvalidDatasetError, match=r"1 annotations .* image_id that is not an int"):
        check_coco_dataset("ds", write(text_refs), image_root)
    float_ids = dict(data, images=[dict(image, id=float(image["id"])) for image in data["images"]])
    with pytest.raises(InvalidDatasetError, match=r"4 images .* have an id that is not an integ"):
        check_coco_dataset("ds", write(float_ids), image_root)


def test_training_datasets_are_checked_before_use(shapes_datasets_root, tmp_path):
    """Registered custom datasets are checked by prepare_datasets, against the model too."""
    data, image_root, write = _copy_of_shapes_val(shapes_datasets_root, tmp_path)
    register_coco_dataset("test_unlabelled_ds", write({**data, "annotations": []}), image_root)
    prepare_datasets(["test_unlabelled_ds"])  # fine for evaluation
    with pytest.raises(InvalidDatasetError, match="no annotations"):
        prepare_datasets(["test_unlabelled_ds"], for_training=True)
    DatasetCatalog.register("test_five_classes_ds", list)  # e.g. a builtin dataset
    MetadataCatalog.get("test_five_classes_ds").set(thing_classes=list("abcde"))
    with pytest.raises(InvalidDatasetError, match="has 5 classes .*num_classes=5"):
        prepare_datasets(["test_five_classes_ds"], num_classes=3)
    with pytest.raises(InvalidDatasetError, match="is a folder"):
        register_coco_dataset("test_folder_ds", str(tmp_path), image_root)


def test_missing_builtin_coco_says_where_files_are_expected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # builtin paths are relative to $DETECTRON2_DATASETS="datasets"
    with pytest.raises(DatasetFilesNotFoundError) as err:
        prepare_datasets(["coco_2017_val"])
    msg = str(err.value)
    assert "coco_2017_val" in msg and "instances_val2017.json" in msg
    assert "val2017" in msg and "DETECTRON2_DATASETS" in msg


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownDatasetError) as err:
        prepare_datasets(["coco_2017_trian"])
    msg = str(err.value)
    assert "'coco_2017_train'" in msg and "--register-coco" in msg


def test_lsj_pipeline_crops_to_1024_with_matching_boxes_and_masks(shapes_datasets_root):
    dataloader = LazyConfig.load(os.path.join(REPO, "configs/common/coco_lsj.py")).dataloader
    mapper = instantiate(dataloader.train.mapper)
    records = DatasetCatalog.get("shapes_train")
    torch.manual_seed(0)
    np.random.seed(0)
    num_instances, cut = 0, 0
    for _ in range(3):
        for record in records:
            out = mapper(record)
            assert tuple(out["image"].shape) == (3, 1024, 1024)  # cropped or padded to 1024
            inst = out["instances"]
            boxes = inst.gt_boxes.tensor
            assert ((boxes >= 0) & (boxes <= 1024)).all()
            # Boxes are recomputed from the cropped polygons: they agree with the masks.
            torch.testing.assert_close(boxes, inst.gt_masks.get_bounding_boxes().tensor)
            assert len(inst.gt_masks) == len(boxes) == len(inst.gt_classes)
            num_instances += len(boxes)
            cut += int(((boxes[:, :2] < 0.5) | (boxes[:, 2:] > 1023.5)).any())
    assert num_instances > 0 and cut > 0  # some objects were cut by the crop
    # Test-time resize of the published evaluation: shorter side 800 (longer side <= 1333).
    test_out = instantiate(dataloader.test.mapper)(records[0])
    assert min(test_out["image"].shape[1:]) == 800 and max(test_out["image"].shape[1:]) <= 1333
