"""Predictions from Python: a detector of any config, images in, Detectron2 ``Instances`` out.

::

    from mvit_det import Predictor

    predictor = Predictor("mask_rcnn_mvitv2_t.py", weights="model_final.pkl", device="cuda")
    instances = predictor("photo.jpg")          # a path, a numpy array (BGR) or a PIL image
    records = predictor.to_coco(instances, image_id=1)  # COCO result dicts, dataset category ids

Images are preprocessed as in evaluation (the config's test resize and channel order) and the
instances are returned in the coordinates of the original image, on the CPU. ``tools/predict.py``
is a command line over this class.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, detection_utils
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from PIL import Image, ImageOps, UnidentifiedImageError

from .model_zoo import load_weights
from .tools.loading import ConfigSource, LoadedModel, ToolError, build_detector

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "INPUT_FORMATS",
    "ImageInput",
    "Predictor",
    "UnreadableImageError",
    "check_image_pixels",
    "read_image",
    "to_coco",
]

logger = logging.getLogger(__name__)

# The largest image read from a file, in pixels: Pillow's decompression-bomb warning level, a
# 256 MiB RGB image (e.g. 9000x9900). A 12000x12000 image is refused.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# Channel orders of numpy images: "BGR" as OpenCV reads them, or "RGB".
INPUT_FORMATS = ("BGR", "RGB")
# What the predictor takes as an image.
ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image]


class UnreadableImageError(OSError):
    """An image file that cannot be predicted: missing, not a readable image (unknown format,
    damaged or truncated data) or larger than the pixel limit."""


@contextlib.contextmanager
def _pillow_pixel_check_off() -> Iterator[None]:
    """Pillow's own decompression-bomb check off (:func:`read_image` checks the size first)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def check_image_pixels(width: int, height: int, max_pixels: int, limit: str) -> None:
    """
    Refuses an image of more than ``max_pixels`` pixels.

    Args:
        width: image width.
        height: image height.
        max_pixels: the largest width x height allowed; 0 for no limit.
        limit: the name of the limit in the message (``--max-image-pixels``, ...).

    Raises:
        UnreadableImageError: the image is larger.
    """
    if max_pixels and width * height > max_pixels:
        raise UnreadableImageError(
            f"{width}x{height} is {width * height} pixels, more than {limit} "
            f"{max_pixels}; not decoded (raise the limit, or 0 for none, to predict it)"
        )


def read_image(
    path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, limit: str = "max_image_pixels"
) -> np.ndarray:
    """
    Reads an image as Detectron2 does (EXIF orientation applied), after checking its size.

    Args:
        path: the image file.
        max_pixels: the largest width x height decoded; 0 for no limit.
        limit: the name of the limit in the message of an image that is too large.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        UnreadableImageError: more pixels than ``max_pixels`` (read from the header, before any
            decoding), or not a readable image (missing, unknown or damaged data, a link loop).
    """
    try:
        with _pillow_pixel_check_off():
            with open(path, "rb") as f:
                width, height = Image.open(f).size  # the header only: nothing is decoded
            check_image_pixels(width, height, max_pixels, limit)
            return detection_utils.read_image(path, format="RGB")
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not a readable image: not a format Pillow reads, or damaged"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UnreadableImageError(f"not a readable image: {why}") from None


def to_coco(
    instances: Instances,
    image_id: int,
    category_ids: Optional[Mapping[int, int]] = None,
    **extra: Any,
) -> List[Dict[str, Any]]:
    """
    COCO result records of one image's instances, as Detectron2's ``COCOEvaluator`` writes them.

    Args:
        instances: one image's predictions (``pred_boxes``, ``scores``, ``pred_classes``, and
            ``pred_masks`` or ``pred_keypoints`` when the model has them).
        image_id: the ``image_id`` of the records.
        category_ids: contiguous class index -> the dataset's category id
            (:attr:`Predictor.category_ids`); None keeps the class index.
        extra: fields added to every record (e.g. ``file_name``).

    Returns:
        one dict per instance: ``image_id``, ``category_id``, ``bbox`` (XYWH), ``score``, and
        ``segmentation`` (RLE, ``counts`` as str) or ``keypoints``, plus ``extra``.
    """
    records = instances_to_coco_json(instances.to("cpu"), image_id)
    for record in records:
        if category_ids is not None:
            record["category_id"] = category_ids[record["category_id"]]
        record.update(extra)
    return records


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


def _check_input_format(input_format: str) -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"input_format={input_format!r}: numpy images are 'BGR' (as cv2.imread gives them) "
            "or 'RGB'"
        )
    return input_format


def _check_array(image: np.ndarray, input_format: str) -> None:
    """Raises ValueError for anything but a (H, W, 3) uint8 image."""
    order = f"channels last, in {input_format} order (input_format={input_format!r})"
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        raise ValueError(
            f"numpy image of shape {image.shape} looks channels-first: give (H, W, 3), "
            f"{order}, e.g. image.transpose(1, 2, 0)"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ValueError(
            f"numpy image of shape {image.shape} has one channel: give (H, W, 3), {order}; "
            "for a grayscale image, np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)"
        )
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError(
            f"numpy image of shape {image.shape} has 4 channels: give (H, W, 3), {order}; "
            "drop the alpha channel with image[:, :, :3]"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"numpy image of shape {image.shape}: give (H, W, 3), {order}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"numpy image of shape {image.shape} is empty")
    if image.dtype != np.uint8:
        raise ValueError(
            f"numpy image of dtype {image.dtype}: give uint8 values 0-255 (e.g. "
            "np.clip(image * 255, 0, 255).astype(np.uint8) for floats in [0, 1])"
        )


class Predictor:
    """
    A detector of any config with its weights, preprocessing as in evaluation, for Python.

    ``predictor(image)`` returns the Detectron2 ``Instances`` of one image, ``predictor.batch``
    those of several; ``predictor.to_coco`` turns them into COCO result records.
    ``tools/predict.py`` is a command line over this class.
    """

    def __init__(
        self,
        config: ConfigSource,
        weights: Optional[str] = None,
        device: str = "cpu",
        *,
        opts: Sequence[str] = (),
        input_format: str = "BGR",
        score_threshold: float = 0.0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        trust_checkpoint: bool = False,
        trust_config: bool = False,
    ) -> None:
        """
        Args:
            config: a config as the tools take it: a LazyConfig ``.py`` (path, or shipped name
                such as ``"mask_rcnn_mvitv2_t.py"`` or ``"mask_rcnn_mvitv2_t"``), the LazyConfig
                ``config.yaml`` of a training run, a yacs ``.yaml`` (e.g.
                ``configs/yacs/mask_rcnn_mvitv2_t.yaml``), or a config object: a loaded
                LazyConfig (``DictConfig``) or a yacs ``CfgNode`` (copied, not changed).
            weights: checkpoint path or URL (``#sha256=<hex>`` pins a URL's digest), in any
                format :class:`~mvit_det.BackboneCheckpointer` reads; None keeps the random
                initialisation (a warning is logged).
            device: "cpu", "cuda", "cuda:1", ...
            opts: config overrides, ``key=value`` (LazyConfig) or ``KEY VALUE`` pairs (yacs).
            input_format: channel order of numpy images, "BGR" (as ``cv2.imread`` gives them,
                and Detectron2's ``DefaultPredictor`` takes them) or "RGB". Paths and PIL images
                carry their own order.
            score_threshold: instances scoring below it are dropped (0: keep what the model
                returns; the model applies its own test score threshold first).
            max_image_pixels: image files of more pixels (width x height, read from the header
                before decoding) are refused; 0 for no limit.
            trust_checkpoint: unpickle Python objects of any kind from the weights (by default
                only tensors and plain data are read); only for files from a trusted source.
            trust_config: read a YAML config with YAML's full loader (``!!python/...`` tags).

        Raises:
            ToolError: unknown (the message lists the shipped configs) or unsafe config, bad
                override, CUDA asked for but absent.
            CheckpointError: unreadable, unsafe or unfitting weights (its subclasses name why).
            ValueError: bad ``input_format``, ``score_threshold`` or ``max_image_pixels``.
        """
        self._check_settings(input_format, score_threshold, max_image_pixels)
        loaded = build_detector(config, device, opts, trust_config=trust_config)
        if weights:
            load_weights(loaded.model, weights, trust_checkpoint=trust_checkpoint)
        else:
            logger.warning(
                "Predictor without weights: the model keeps its random initialisation; pass "
                "weights=<path or URL> for meaningful predictions"
            )
        self._setup(loaded, input_format, score_threshold, max_image_pixels)

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        *,
        input_format: str = "BGR",
        score_threshold: float = 0.0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> "Predictor":
        """
        A predictor of a model the tools' :func:`~mvit_det.tools.loading.load_model` built.

        Args:
            loaded: the model, in eval mode, and its preprocessing.
            input_format: see :meth:`__init__`.
            score_threshold: see :meth:`__init__`.
            max_image_pixels: see :meth:`__init__`.
        """
        cls._check_settings(input_format, score_threshold, max_image_pixels)
        predictor = cls.__new__(cls)
        predictor._setup(loaded, input_format, score_threshold, max_image_pixels)
        return predictor

    @staticmethod
    def _check_settings(input_format: str, score_threshold: float, max_image_pixels: int) -> None:
        _check_input_format(input_format)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_image_pixels < 0:
            raise ValueError(f"max_image_pixels must be >= 0 (0: no limit), got {max_image_pixels}")

    def _setup(
        self, loaded: LoadedModel, input_format: str, score_threshold: float, max_pixels: int
    ) -> None:
        self.loaded = loaded
        self.input_format = input_format
        self.score_threshold = score_threshold
        self.max_image_pixels = max_pixels
        self._category_ids: Optional[Dict[int, int]] = None
        self._category_ids_known = False

    @property
    def model(self) -> torch.nn.Module:
        """The detector, in eval mode."""
        return self.loaded.model

    @property
    def metadata(self) -> Any:
        """Detectron2 metadata of the config's test dataset (``thing_classes``, ...)."""
        return self.loaded.metadata

    @property
    def category_ids(self) -> Optional[Dict[int, int]]:
        """
        Contiguous class index -> the test dataset's category id (e.g. COCO's 1..90), or None
        for a dataset without category ids. A dataset registered from a COCO JSON gets its ids
        when it is loaded: its annotation file is read once, here.

        Raises:
            ToolError: that annotation file cannot be read.
        """
        if not self._category_ids_known:
            mapping = _dataset_id_to_contiguous_id(self.loaded)
            self._category_ids = {v: k for k, v in mapping.items()} if mapping else None
            self._category_ids_known = True
        return self._category_ids

    def __call__(self, image: ImageInput) -> Instances:
        """
        Predicts one image.

        Args:
            image: a path (read as Detectron2 reads images: EXIF orientation applied), a
                (H, W, 3) uint8 numpy array in :attr:`input_format` channel order, or a PIL
                image (EXIF orientation applied, converted to RGB).

        Returns:
            the instances scoring at least :attr:`score_threshold`, on the CPU, in the
            coordinates of the original image (``pred_boxes`` XYXY, ``scores``,
            ``pred_classes`` as contiguous class indexes, ``pred_masks`` (N, H, W) bool for
            models with masks).

        Raises:
            UnreadableImageError: a path that is missing, not a readable image or too large.
            ValueError: a numpy array of another shape or dtype.
            TypeError: another kind of object.
        """
        return self._predict([self.read(image)])[0]

    def batch(
        self, images: Sequence[ImageInput], batch_size: Optional[int] = None
    ) -> List[Instances]:
        """
        Predicts several images; every image is read and checked before the model runs.

        Images whose resized sizes are equal go through the model together; others are not
        padded to a common size, so each image's instances equal those of a single call.

        Args:
            images: as for :meth:`__call__`.
            batch_size: at most this many images per model call; None for no limit.

        Returns:
            the instances of each image, in order (see :meth:`__call__`).

        Raises:
            as :meth:`__call__`; the message names the position of the bad image.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            raise TypeError("batch() takes a sequence of images; predict one with predictor(image)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        pictures = [self.read(image, f"images[{i}]: ") for i, image in enumerate(images)]
        return self._predict(pictures, batch_size)

    def _predict(
        self, pictures: List[np.ndarray], batch_size: Optional[int] = None
    ) -> List[Instances]:
        """The instances of (H, W, 3) RGB images, run in groups of equal resized size."""
        inputs = [self.loaded.model_input(self._to_model_format(p)) for p in pictures]
        groups: Dict[tuple, List[int]] = {}
        for index, model_input in enumerate(inputs):
            groups.setdefault(tuple(model_input["image"].shape), []).append(index)
        results: List[Optional[Instances]] = [None] * len(inputs)
        for indexes in groups.values():
            step = batch_size or len(indexes)
            for start in range(0, len(indexes), step):
                chunk = indexes[start : start + step]
                for index, instances in zip(chunk, self._run([inputs[i] for i in chunk])):
                    results[index] = instances
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _run(self, inputs: List[Dict[str, Any]]) -> List[Instances]:
        results = []
        for output in self.loaded.model(inputs):
            instances = output["instances"].to("cpu")
            results.append(instances[instances.scores >= self.score_threshold])
        return results

    def read(self, image: ImageInput, where: str = "") -> np.ndarray:
        """
        An image as the predictor sees it before the test resize.

        Args:
            image: as for :meth:`__call__`.
            where: put in front of error messages (e.g. ``"images[2]: "``).

        Returns:
            (H, W, 3) uint8 RGB.
        """
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            try:
                return read_image(path, self.max_image_pixels)
            except UnreadableImageError as e:
                raise UnreadableImageError(f"{where}{path}: {e}") from None
        if isinstance(image, Image.Image):
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        if isinstance(image, np.ndarray):
            try:
                _check_array(image, self.input_format)
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
            return image if self.input_format == "RGB" else image[:, :, ::-1]
        raise TypeError(
            f"{where}an image is a path, a (H, W, 3) uint8 numpy array or a PIL image, not "
            f"{type(image).__module__}.{type(image).__name__}"
        )

    def _to_model_format(self, image_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB -> the channel order the model takes, contiguous."""
        if self.loaded.input_format == "BGR":
            image_rgb = image_rgb[:, :, ::-1]
        return np.ascontiguousarray(image_rgb)

    def to_coco(self, instances: Instances, image_id: int, **extra: Any) -> List[Dict[str, Any]]:
        """
        COCO result records of one image's instances, with the test dataset's category ids (see
        :func:`to_coco` and :attr:`category_ids`).

        Args:
            instances: from :meth:`__call__` or :meth:`batch`.
            image_id: the ``image_id`` of the records.
            extra: fields added to every record.
        """
        return to_coco(instances, image_id, self.category_ids, **extra)
