"""Runs a trained detector on your own images, folders, globs or videos.

Writes, into ``--output``: one visualised PNG per image and one visualised MP4 per video, named
after the input file with its extension kept (``a.jpg`` -> ``a.jpg.png``, ``a.png`` ->
``a.png.png``, ``clip.avi`` -> ``clip.avi.mp4``; a later input with the same file name, from
another folder, gets ``_2``, ``_3``, ... before the new extension: ``x.png_2.png``);
``predictions.json``, the instances in COCO result format (a list of ``image_id``,
``category_id``, ``bbox`` as XYWH, ``score``, ``segmentation`` as RLE, plus ``file_name`` and,
for videos, ``frame``); and ``images.json``, the COCO ``images`` entries (``id``, ``file_name``,
``height``, ``width``, ``frame``, and ``output``, the visualisation written for it) that the
``image_id`` refer to.

An input that cannot be predicted (not a readable image or video, a symbolic-link loop, more
pixels than ``--max-image-pixels``, checked from the file's header before decoding) is reported
on stderr as ``warning: skipped <file>: <why>`` and the run goes on; the outputs of the others
are written. Exit status: 0 every input predicted, 1 some were skipped, 2 bad arguments (nothing
predicted).

Examples:
  python tools/predict.py --config mask_rcnn_mvitv2_t.py --weights model_final.pkl \\
      --input photos/ "more/*.jpg" street.mp4 --output out/ --score-threshold 0.5
  python tools/predict.py --config configs/yacs/mask_rcnn_mvitv2_t.yaml --weights w.pkl \\
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
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from ..predictor import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Predictor,
    UnreadableImageError,
    check_image_pixels,
    read_image,
)
from ..utils.file_io import atomic_write
from .loading import ToolError, add_model_arguments, load_model

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "InputSkipped",
    "collect_inputs",
    "main",
    "predict",
    "read_image",
    "Source",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
EXIT_SKIPPED = 1
# The pixel limit as skip messages name it.
LIMIT = "--max-image-pixels"


class InputSkipped(UnreadableImageError):
    """One input cannot be predicted; the run reports it and goes on with the others."""


@dataclass(frozen=True)
class Source:
    """An input file: an image, or a video whose frames are predicted one by one."""

    path: str
    is_video: bool


def collect_inputs(items: Sequence[str]) -> List[Source]:
    """
    Expands the ``--input`` items: files, folders (their images and videos, sorted) and globs.

    Entries of a folder or glob with an image or video extension are kept even when they cannot
    be opened (a broken link, a symbolic-link loop): :func:`predict` reports and skips them.

    Args:
        items: paths, folder paths or glob patterns.

    Returns:
        the input files in order; a file reached twice (a glob repeating a folder, a link to a
        file already listed, a folder reached again through a link loop) appears once, under the
        first path that reached it.

    Raises:
        ToolError: an item that matches nothing, or a file of an unknown type.
    """
    extensions = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    sources: List[Source] = []
    seen = set()
    for item in items:
        if os.path.isdir(item):
            paths = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(extensions)
            )
        elif os.path.isfile(item):
            paths = [item]
        else:
            paths = sorted(glob.glob(item, recursive=True))
        paths = [p for p in paths if p.lower().endswith(extensions) and not os.path.isdir(p)]
        if not paths:
            raise ToolError(
                f"--input {item!r} matches no image or video (images: "
                f"{', '.join(IMAGE_EXTENSIONS)}; videos: {', '.join(VIDEO_EXTENSIONS)})"
            )
        for path in paths:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                sources.append(Source(path, path.lower().endswith(VIDEO_EXTENSIONS)))
    return sources


def _open_video(path: str, max_pixels: int) -> Tuple[cv2.VideoCapture, float, int]:
    """An opened video, its frame rate and frame count; raises UnreadableImageError."""
    if not os.path.isfile(path):
        raise InputSkipped(_unreadable(path))
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InputSkipped("cannot open the video (unsupported codec or not a video)")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        check_image_pixels(width, height, max_pixels, LIMIT)
    except UnreadableImageError:
        capture.release()
        raise
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))


def _unreadable(path: str) -> str:
    """Why an input path cannot be opened, in words."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"cannot be opened ({e.strerror or e})"
    return "not a regular file"


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


def draw(predictor: Predictor, image_rgb: np.ndarray, instances: Instances) -> np.ndarray:
    """The image with the instances drawn by Detectron2's Visualizer, (H, W, 3) RGB."""
    visualizer = Visualizer(image_rgb, predictor.metadata)
    return visualizer.draw_instance_predictions(instances).get_image()


def _write_png(path: str, image_rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ToolError(f"could not encode {path}")
    atomic_write(path, lambda f: f.write(encoded.tobytes()))


class _OutputNames:
    """Output file names: the input's file name, extension kept, then the output's extension;
    ``_2``, ``_3``, ... before the output's extension for a file name seen before."""

    def __init__(self) -> None:
        self.used: Dict[str, int] = {}

    def __call__(self, path: str, extension: str) -> str:
        """
        Args:
            path: the input file.
            extension: ".png" or ".mp4".

        Returns:
            e.g. ``a.jpg.png``, then ``a.jpg_2.png`` for another ``a.jpg``. Never the name of
            another input's output: input names end with an image or video extension, so a
            numbered name (``a.jpg_2``) is never an input's name.
        """
        name = os.path.basename(path)
        count = self.used.get(name, 0) + 1
        self.used[name] = count
        return (name if count == 1 else f"{name}_{count}") + extension


def _warn_skipped(path: str, why: str) -> None:
    # tqdm.write keeps the warning on its own line, above the progress bar
    tqdm.write(f"warning: skipped {path}: {why}", file=sys.stderr)


def predict(
    predictor: Predictor,
    sources: Sequence[Source],
    output_dir: str,
    batch_size: int = 1,
    visualize: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Dict[str, Any]:
    """
    Predicts every image and video frame, writing visualisations and returning the results.

    An input that cannot be predicted is reported on stderr (``warning: skipped <file>: <why>``)
    and left out; the others are predicted.

    Args:
        predictor: the model, taking RGB images (``input_format="RGB"``).
        sources: from :func:`collect_inputs`.
        output_dir: folder for the PNGs and videos (created).
        batch_size: images (or frames) per model call.
        visualize: write the PNGs / videos.
        max_image_pixels: larger images and videos are skipped before decoding; 0 for no limit.

    Returns:
        ``{"images": [{"id", "file_name", "height", "width", ("frame"), ("output")}],
        "annotations": [COCO result records], "skipped": [{"file_name", "reason"}]}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    names = _OutputNames()

    def skip(path: str, why: str) -> None:
        _warn_skipped(path, why)
        skipped.append({"file_name": path, "reason": why})

    # Output names in input order, whatever is skipped, so that a name never depends on which
    # other inputs could be read.
    outputs = {s.path: names(s.path, ".mp4" if s.is_video else ".png") for s in sources}
    total = 0
    videos = {}
    for source in sources:
        if source.is_video:
            try:
                videos[source.path] = _open_video(source.path, max_image_pixels)
            except UnreadableImageError as e:
                skip(source.path, str(e))
                continue
            total += max(videos[source.path][2], 0)
        else:
            total += 1
    progress = tqdm(total=total or None, unit="img", desc="predict", file=sys.stderr)

    def record(image: np.ndarray, instances: Instances, file_name: str, **extra: Any) -> None:
        image_id = len(images)
        h, w = image.shape[:2]
        entry = dict(id=image_id, file_name=file_name, height=h, width=w, **extra)
        if visualize:
            entry["output"] = outputs[file_name]
        images.append(entry)
        annotations.extend(predictor.to_coco(instances, image_id, file_name=file_name, **extra))

    def readable_images() -> Iterator[Tuple[str, np.ndarray]]:
        for source in sources:
            if source.is_video:
                continue
            try:
                yield source.path, read_image(source.path, max_image_pixels, LIMIT)
            except UnreadableImageError as e:
                skip(source.path, str(e))
                progress.update(1)

    for batch in _batched(readable_images(), batch_size):
        pictures = [picture for _, picture in batch]
        for (path, picture), instances in zip(batch, predictor.batch(pictures)):
            record(picture, instances, path)
            if visualize:
                drawn = draw(predictor, picture, instances)
                _write_png(os.path.join(output_dir, outputs[path]), drawn)
            progress.update(1)

    for path, (capture, fps, _) in videos.items():
        final = os.path.join(output_dir, outputs[path])
        partial = os.path.join(output_dir, f".{outputs[path]}.partial.mp4")
        writer: Optional[cv2.VideoWriter] = None
        frame_index = 0
        try:
            for batch in _batched(_frames(capture), batch_size):
                for frame, instances in zip(batch, predictor.batch(batch)):
                    record(frame, instances, path, frame=frame_index)
                    frame_index += 1
                    if visualize:
                        if writer is None:
                            h, w = frame.shape[:2]
                            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                            writer = cv2.VideoWriter(partial, fourcc, fps, (w, h))
                        drawn = draw(predictor, frame, instances)
                        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    progress.update(1)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if writer is not None:
            os.replace(partial, final)  # the video appears whole or not at all
        if frame_index == 0:
            skip(path, "the video has no readable frame")
    progress.close()
    return {"images": images, "annotations": annotations, "skipped": skipped}


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
    parser.add_argument("--no-vis", action="store_true", help="write the JSON files only")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="skip images and videos of more than N pixels (width x height, read from the "
        f"file's header before decoding); 0 for no limit (default {DEFAULT_MAX_IMAGE_PIXELS}, "
        "Pillow's decompression-bomb warning level)",
    )
    add_model_arguments(parser, weights_required=True)
    args = parser.parse_args(argv)
    if args.max_image_pixels < 0:
        parser.error(f"--max-image-pixels must be >= 0 (0: no limit), got {args.max_image_pixels}")
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
        the exit status: 0 every input predicted, 1 some inputs skipped (the others' outputs are
        written), 2 bad arguments or files (nothing predicted).
    """
    args = parse_args(argv)
    try:
        sources = collect_inputs(args.input)
        loaded = load_model(
            args.config,
            args.weights,
            args.device,
            args.opts,
            trust_checkpoint=args.trust_checkpoint,
            trust_config=args.trust_config,
        )
        # The frames and images are read here, in RGB.
        predictor = Predictor.from_loaded(
            loaded, input_format="RGB", score_threshold=args.score_threshold
        )
        _ = predictor.category_ids  # the dataset's ids, read now: a ToolError before any work
        results = predict(
            predictor,
            sources,
            args.output,
            args.batch_size,
            not args.no_vis,
            args.max_image_pixels,
        )
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json_path = os.path.join(args.output, "predictions.json")
    atomic_write(json_path, lambda f: f.write(json.dumps(results["annotations"]).encode()))
    images_path = os.path.join(args.output, "images.json")
    atomic_write(images_path, lambda f: f.write(json.dumps(results["images"]).encode()))
    print(
        f"{len(results['annotations'])} instances in {len(results['images'])} images "
        f"(score >= {args.score_threshold}); wrote {json_path}, {images_path}"
        + ("" if args.no_vis else f" and the visualisations in {args.output}")
    )
    if results["skipped"]:
        print(
            f"warning: {len(results['skipped'])} of {len(sources)} inputs skipped (see the "
            "warnings above)",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    return 0
