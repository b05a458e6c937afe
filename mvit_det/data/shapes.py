"""A deterministic, COCO-format instance-segmentation dataset of synthetic shapes.

Every image shows two to five non-overlapping filled shapes (circles, triangles, squares) on a
noisy two-colour gradient background. Each object is drawn from the very polygon that is stored
as its mask, so masks and boxes are exact. The dataset is written as real files:

    <root>/annotations/instances_{train,val}.json
    <root>/{train,val}/000000.jpg ...

and can be regenerated bit for bit from its seed. ``python -m mvit_det.data --root DIR`` writes it
from the command line.
"""

import json
import math
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = ["SHAPE_CLASSES", "SPLIT_SIZES", "generate_shapes_dataset", "shapes_dataset_files"]

SHAPE_CLASSES = ("circle", "triangle", "square")
# Number of images per split.
SPLIT_SIZES = {"train": 300, "val": 100}
_SPLIT_SEEDS = {"train": 0, "val": 1}
_MIN_SIDE, _MAX_SIDE = 160, 240  # image side range in pixels
_MIN_RADIUS, _MAX_RADIUS = 14, 38  # circumradius range of a shape in pixels
_MIN_OBJECTS, _MAX_OBJECTS = 2, 5
_FORMAT_VERSION = 1


def shapes_dataset_files(root: str, split: str) -> Tuple[str, str]:
    """The annotation file and image folder of one split.

    Args:
        root: dataset root folder.
        split: "train" or "val".

    Returns:
        (json_file, image_root)
    """
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _shape_polygon(rng: np.random.Generator, category: str, cx: float, cy: float, radius: float):
    """Vertices (N, 2) in float pixel coordinates of one shape with a random rotation."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if category == "circle":
        n, radius_scale = 32, 1.0
    else:  # equilateral triangle or square, a bit larger so that the areas are closer
        n, radius_scale = (3 if category == "triangle" else 4), 1.15
    theta = angle + np.arange(n) * (2.0 * math.pi / n)
    r = radius * radius_scale
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A noisy linear gradient between two random colours, uint8 (H, W, 3)."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    direction = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * math.cos(direction) + ys * math.sin(direction)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)  # (H, W) in [0, 1]
    img = c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> Tuple[int, ...]:
    """A colour far (L2 > 120) from the mean background colour under the object."""
    mean = background.reshape(-1, 3).mean(axis=0)
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - mean) > 120:
            return tuple(int(c) for c in colour)


def _make_image(rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict]]:
    """One image (uint8 BGR) and its objects as dicts with category index and polygon."""
    height, width = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    image = _background(rng, height, width)
    placed: List[Tuple[float, float, float]] = []  # (cx, cy, circumradius incl. margin)
    objects = []
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        for _attempt in range(50):
            cat = int(rng.integers(len(SHAPE_CLASSES)))
            radius = float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS))
            extent = radius * 1.15 + 2.0  # bounding circle of every shape, plus a margin
            cx = float(rng.uniform(extent, width - extent))
            cy = float(rng.uniform(extent, height - extent))
            if all(math.hypot(cx - x, cy - y) > extent + e for x, y, e in placed):
                break
        else:
            continue  # no free spot for this object
        placed.append((cx, cy, extent))
        poly = _shape_polygon(rng, SHAPE_CLASSES[cat], cx, cy, radius)
        x0, y0 = (int(v) for v in poly.min(axis=0))
        x1, y1 = (int(math.ceil(v)) for v in poly.max(axis=0))
        colour = _contrasting_colour(rng, image[y0 : y1 + 1, x0 : x1 + 1])
        # Draw with 4-bit sub-pixel precision: the filled region is the stored polygon.
        cv2.fillPoly(image, [np.round(poly * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
        objects.append({"category": cat, "polygon": poly})
    return image, objects


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _write_split(root: str, split: str, num_images: int, seed: int) -> None:
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(num_images):
        rng = np.random.default_rng([seed, _FORMAT_VERSION, image_id])
        image, objects = _make_image(rng)
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for obj in objects:
            poly = np.round(obj["polygon"], 2)
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "segmentation": [[float(v) for v in poly.reshape(-1)]],
                    "area": round(_polygon_area(poly), 2),
                    "bbox": [
                        float(x0),
                        float(y0),
                        round(float(x1 - x0), 2),
                        round(float(y1 - y0), 2),
                    ],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPE_CLASSES)
    ]
    json_file, _ = shapes_dataset_files(root, split)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump(
            {
                "info": {"description": f"mvit_det synthetic shapes, {split}", "version": "1"},
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
            f,
        )


def generate_shapes_dataset(root: str, sizes: Optional[Dict[str, int]] = None) -> bool:
    """Writes the dataset under ``root`` unless all its annotation files already exist.

    The files are written to a temporary folder next to ``root`` and moved into place at the end,
    so an interrupted run or concurrent callers never leave a half-written dataset behind.

    Args:
        root: dataset root folder (created if needed).
        sizes: number of images per split ("train" and/or "val"); defaults to
            :data:`SPLIT_SIZES`.

    Returns:
        True if the dataset was generated, False if it already existed.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(_SPLIT_SEEDS)
    if unknown:
        raise ValueError(
            f"Unknown split(s) {sorted(unknown)}; the splits are {list(_SPLIT_SEEDS)}."
        )
    if all(os.path.isfile(shapes_dataset_files(root, split)[0]) for split in sizes):
        return False
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes_tmp_", dir=parent)
    try:
        for split, num in sizes.items():
            _write_split(tmp, split, num, _SPLIT_SEEDS[split])
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first, or root holds unrelated files.
            if not all(os.path.isfile(shapes_dataset_files(root, s)[0]) for s in sizes):
                raise RuntimeError(
                    f"Cannot write the synthetic shapes dataset to '{root}': the folder exists "
                    "and is not a complete shapes dataset. Remove it or choose another root."
                )
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
