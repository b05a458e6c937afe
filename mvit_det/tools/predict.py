"""Runs a trained detector on your own images, folders, globs or videos.

Writes, into ``--output``: one visualised PNG per image (``<name>.png``), one visualised video per
input video (``<name>.mp4``), ``predictions.json``, the instances in COCO result format (a list of
``image_id``, ``category_id``, ``bbox`` as XYWH, ``score``, ``segmentation`` as RLE, plus
``file_name`` and, for videos, ``frame``), and ``images.json``, the COCO ``images`` entries
(``id``, ``file_name``, ``height``, ``width``, ``frame``) that the ``image_id`` refer to.

Examples:
  python tools/predict.py --config mask_rcnn_mvitv2_t.py --weights model_final.pkl \
      --input photos/ "more/*.jpg" street.mp4 --output out/ --score-threshold 0.5
  python tools/predict.py --config configs/yacs/mask_rcnn_mvitv2_t.yaml --weights w.pkl \
      --input a.jpg --device cuda --batch-size 8 --opts MODEL.ROI_HEADS.NUM_CLASSES 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, detection_utils
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from ..utils.file_io import atomic_write
from .loading import LoadedModel, ToolError, add_model_arguments, load_model

__all__ = ["collect_inputs", "main", "predict", "Source"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class Source:
    """An input file: an image, or a video whose frames are predicted one by one."""

    path: str
    is_video: bool


def collect_inputs(items: Sequence[str]) -> List[Source]:
    """
    Expands the ``--input`` items: files, folders (their images and videos, sorted) and globs.

    Args:
        items: paths, folder paths or glob patterns.

    Returns:
        the input files in order, without duplicates.

    Raises:
        ToolError: an item that matches nothing, or a file of an unknown type.
    """
    sources: List[Source] = []
    seen = set()
    for item in items:
        if os.path.isdir(item):
            paths = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            )
        elif os.path.isfile(item):
            paths = [item]
        else:
            paths = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
        if not paths:
            raise ToolError(
                f"--input {item!r} matches no image or video (images: "
                f"{', '.join(IMAGE_EXTENSIONS)}; videos: {', '.join(VIDEO_EXTENSIONS)})"
            )
        for path in paths:
            if path not in seen:
                seen.add(path)
                sources.append(Source(path, path.lower().endswith(VIDEO_EXTENSIONS)))
    return sources


def _open_video(path: str) -> Tuple[cv2.VideoCapture, float, int]:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ToolError(f"cannot open video {path} (unsupported codec or not a video)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))


def _frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """RGB frames of a video, (H, W, 3) uint8."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _batched(items: Iterator[Any], size: int) -> Iterator[List[Any]]:
    batch: List[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _dataset_id_to_contiguous_id(loaded: LoadedModel) -> Optional[Dict[int, int]]:
    """
    The test dataset's category id -> contiguous class index, as in training.

    Detectron2's builtin COCO metadata has it from the start; a dataset read from a COCO JSON
    (registered with ``register_coco_instances``, or the shapes dataset) gets it, and its class
    names, only when it is loaded (sorted category ids -> 0, 1, ...): such a dataset is loaded
    here for them.

    Args:
        loaded: the model and the name of its test dataset.

    Returns:
        the mapping, or None for a dataset without category ids (records keep the class index).

    Raises:
        ToolError: the dataset's annotations cannot be read.
    """
    metadata = loaded.metadata
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if (
        mapping is None
        and metadata.get("json_file", None)
        and loaded.dataset in DatasetCatalog.list()
    ):
        try:
            DatasetCatalog.get(loaded.dataset)
        except OSError as e:
            raise ToolError(
                f"the category ids and class names of {loaded.dataset!r}, the config's test "
                f"dataset, come from its annotations, which cannot be read: {e}"
            ) from None
        mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    return mapping


class Predictor:
    """Batched inference, visualisation and COCO-format records for one loaded model."""

    def __init__(self, loaded: LoadedModel, score_threshold: float) -> None:
        """
        Args:
            loaded: the model and its preprocessing.
            score_threshold: instances scoring below it are dropped.
        """
        self.loaded = loaded
        self.score_threshold = score_threshold
        mapping = _dataset_id_to_contiguous_id(loaded)
        # contiguous class index -> the dataset's category id (COCO ids), or the index itself
        self.category_ids = {v: k for k, v in mapping.items()} if mapping else None

    @torch.no_grad()
    def __call__(self, images_rgb: List[np.ndarray]) -> List[Instances]:
        """
        Args:
            images_rgb: (H, W, 3) uint8 RGB images.

        Returns:
            per image, the instances with score >= the threshold, on the CPU.
        """
        to_model = (lambda im: im) if self.loaded.input_format == "RGB" else self._swap
        inputs = [self.loaded.model_input(to_model(image)) for image in images_rgb]
        outputs = self.loaded.model(inputs)
        results = []
        for out in outputs:
            instances = out["instances"].to("cpu")
            results.append(instances[instances.scores >= self.score_threshold])
        return results

    @staticmethod
    def _swap(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, :, ::-1])  # RGB <-> BGR

    def draw(self, image_rgb: np.ndarray, instances: Instances) -> np.ndarray:
        """The image with the instances drawn, (H, W, 3) RGB."""
        visualizer = Visualizer(image_rgb, self.loaded.metadata)
        return visualizer.draw_instance_predictions(instances).get_image()

    def records(self, instances: Instances, image_id: int, **extra: Any) -> List[Dict[str, Any]]:
        """COCO result records of one image's instances, with ``extra`` fields added."""
        records = instances_to_coco_json(instances, image_id)
        for record in records:
            if self.category_ids is not None:
                record["category_id"] = self.category_ids[record["category_id"]]
            record.update(extra)
        return records


def _write_png(path: str, image_rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ToolError(f"could not encode {path}")
    atomic_write(path, lambda f: f.write(encoded.tobytes()))


def _output_name(path: str, used: Dict[str, int]) -> str:
    """A unique output stem for an input path (``a``, ``a_1``, ... for equal file names)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    count = used.get(stem, 0)
    used[stem] = count + 1
    return stem if count == 0 else f"{stem}_{count}"


def predict(
    predictor: Predictor,
    sources: Sequence[Source],
    output_dir: str,
    batch_size: int = 1,
    visualize: bool = True,
) -> Dict[str, Any]:
    """
    Predicts every image and video frame, writing visualisations and returning the results.

    Args:
        predictor: the model wrapper.
        sources: from :func:`collect_inputs`.
        output_dir: folder for the PNGs and videos (created).
        batch_size: images (or frames) per model call.
        visualize: write the PNGs / videos.

    Returns:
        ``{"images": [{"id", "file_name", "height", "width", ("frame")}], "annotations":
        [COCO result records]}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    used_names: Dict[str, int] = {}
    total = 0
    videos = {}
    for source in sources:
        if source.is_video:
            videos[source.path] = _open_video(source.path)
            total += max(videos[source.path][2], 0)
        else:
            total += 1
    progress = tqdm(total=total or None, unit="img", desc="predict", file=sys.stderr)

    def record(image: np.ndarray, instances: Instances, file_name: str, **extra: Any) -> None:
        image_id = len(images)
        h, w = image.shape[:2]
        images.append(dict(id=image_id, file_name=file_name, height=h, width=w, **extra))
        annotations.extend(predictor.records(instances, image_id, file_name=file_name, **extra))

    image_sources = [s.path for s in sources if not s.is_video]
    for batch in _batched(iter(image_sources), batch_size):
        pictures = [detection_utils.read_image(p, format="RGB") for p in batch]
        for path, picture, instances in zip(batch, pictures, predictor(pictures)):
            record(picture, instances, path)
            if visualize:
                name = _output_name(path, used_names)
                _write_png(
                    os.path.join(output_dir, name + ".png"), predictor.draw(picture, instances)
                )
            progress.update(1)

    for path, (capture, fps, _) in videos.items():
        name = _output_name(path, used_names)
        final = os.path.join(output_dir, name + ".mp4")
        partial = os.path.join(output_dir, f".{name}.partial.mp4")
        writer: Optional[cv2.VideoWriter] = None
        frame_index = 0
        try:
            for batch in _batched(_frames(capture), batch_size):
                for frame, instances in zip(batch, predictor(batch)):
                    record(frame, instances, path, frame=frame_index)
                    frame_index += 1
                    if visualize:
                        if writer is None:
                            h, w = frame.shape[:2]
                            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                            writer = cv2.VideoWriter(partial, fourcc, fps, (w, h))
                        drawn = predictor.draw(frame, instances)
                        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    progress.update(1)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if writer is not None:
            os.replace(partial, final)  # the video appears whole or not at all
        if frame_index == 0:
            raise ToolError(f"video {path} has no readable frame")
    progress.close()
    return {"images": images, "annotations": annotations}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="images, folders, globs or videos"
    )
    parser.add_argument("--output", default="output/predict", help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--no-vis", action="store_true", help="write predictions.json only")
    add_model_arguments(parser, weights_required=True)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """
    The command line: predicts, writes the outputs, prints where they are.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 bad arguments or files.
    """
    args = parse_args(argv)
    try:
        sources = collect_inputs(args.input)
        loaded = load_model(args.config, args.weights, args.device, args.opts)
        predictor = Predictor(loaded, args.score_threshold)
        results = predict(predictor, sources, args.output, args.batch_size, not args.no_vis)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json_path = os.path.join(args.output, "predictions.json")
    atomic_write(json_path, lambda f: f.write(json.dumps(results["annotations"]).encode()))
    images_path = os.path.join(args.output, "images.json")
    atomic_write(images_path, lambda f: f.write(json.dumps(results["images"]).encode()))
    print(
        f"{len(results['annotations'])} instances in {len(results['images'])} images "
        f"(score >= {args.score_threshold}); wrote {json_path}"
        + ("" if args.no_vis else f" and the visualisations in {args.output}")
    )
    return 0
