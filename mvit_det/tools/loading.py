"""A detector from a LazyConfig (``.py``) or a yacs config (``.yaml``) plus weights, for the tools.

Both kinds give the model, its test-time resize and image format, and the metadata (class names,
COCO category ids) of its test dataset, so that predict, evaluate, export and analyze treat them
alike.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..checkpoint import CheckpointError, MViTCheckpointer
from ..data import dataset_names
from ..engine import ConfigOverrideError, apply_overrides_checked
from ..model_zoo import resolve_config_file

__all__ = ["LoadedModel", "ToolError", "add_model_arguments", "check_device", "load_model"]


class ToolError(RuntimeError):
    """A problem with a tool's arguments or files that the user must fix (exit status 2)."""


@dataclass
class LoadedModel:
    """
    Attributes:
        model: the detector, in eval mode, on its device.
        augmentations: the test-time resize of the config.
        input_format: channel order the model expects ("RGB" or "BGR").
        dataset: the config's test dataset (for metadata and evaluation).
        config_file: the resolved config path.
    """

    model: torch.nn.Module
    augmentations: List[T.Augmentation]
    input_format: str
    dataset: str
    config_file: str

    @property
    def metadata(self) -> Any:
        """Detectron2 metadata of :attr:`dataset` (``thing_classes``, ...)."""
        return MetadataCatalog.get(self.dataset)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def model_input(self, image: np.ndarray) -> Dict[str, Any]:
        """
        One model input from an image.

        Args:
            image: (H, W, 3) uint8 image in :attr:`input_format` channel order.

        Returns:
            ``{"image": (3, H', W') tensor resized by the test augmentations, "height": H,
            "width": W}`` (the model maps its outputs back to H x W).
        """
        height, width = image.shape[:2]
        resized = T.AugmentationList(self.augmentations)(T.AugInput(image)).apply_image(image)
        # (H', W', 3) -> (3, H', W')
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor.to(self.device), "height": height, "width": width}


def add_model_arguments(parser: argparse.ArgumentParser, weights_required: bool) -> None:
    """The ``--config``, ``--weights``, ``--device`` and ``--opts`` (last) options."""
    parser.add_argument(
        "--config",
        required=True,
        help="LazyConfig (.py: a path or shipped name such as mask_rcnn_mvitv2_t.py) or yacs "
        "config (.yaml, e.g. configs/yacs/mask_rcnn_mvitv2_t.yaml)",
    )
    parser.add_argument(
        "--weights",
        required=weights_required,
        default="",
        help="checkpoint: path or URL, any format MViTCheckpointer reads",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides, last on the command line (as in Detectron2's demo): key=value "
        "for LazyConfigs, KEY VALUE pairs for yacs configs",
    )


def check_device(device: str) -> None:
    """Raises :class:`ToolError` for a CUDA device on a machine without CUDA."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolError(f"--device {device} was asked for but CUDA is not available; use cpu")


def load_model(
    config: str, weights: str = "", device: str = "cpu", opts: Sequence[str] = ()
) -> LoadedModel:
    """
    Builds the detector of a config and loads its weights.

    Args:
        config: a LazyConfig (path or shipped name) or a yacs ``.yaml``.
        weights: checkpoint path or URL; "" keeps the initialisation (analysis only).
        device: "cpu", "cuda", "cuda:1", ...
        opts: overrides, ``key=value`` (LazyConfig) or ``KEY VALUE`` pairs (yacs).

    Returns:
        the loaded model and its preprocessing.

    Raises:
        ToolError: unknown config, bad override, unreadable or unfitting weights, no CUDA.
    """
    check_device(device)
    try:
        config_file = resolve_config_file(config)
    except FileNotFoundError as e:
        raise ToolError(str(e)) from None
    if config_file.endswith((".yaml", ".yml")):
        loaded = _load_yacs(config_file, device, opts)
    else:
        loaded = _load_lazy(config_file, device, opts)
    if weights:
        try:
            MViTCheckpointer(loaded.model).load(weights)
        except CheckpointError as e:
            raise ToolError(str(e)) from None
    loaded.model.eval()
    return loaded


def _load_lazy(config_file: str, device: str, opts: Sequence[str]) -> LoadedModel:
    cfg = LazyConfig.load(config_file)
    try:
        apply_overrides_checked(cfg, opts)
    except ConfigOverrideError as e:
        raise ToolError(str(e)) from None
    test = cfg.dataloader.test
    return LoadedModel(
        model=instantiate(cfg.model).to(device),
        augmentations=[instantiate(a) for a in test.mapper.augmentations],
        input_format=test.mapper.image_format,
        dataset=dataset_names(test.dataset.names)[0],
        config_file=config_file,
    )


def _load_yacs(config_file: str, device: str, opts: Sequence[str]) -> LoadedModel:
    cfg = get_cfg()  # has MODEL.MVIT: importing mvit_det adds it to Detectron2's defaults
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ToolError(f"yacs config {config_file} with overrides {list(opts)}: {e}") from None
    cfg.MODEL.DEVICE = device
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return LoadedModel(
        model=build_model(cfg),
        augmentations=[resize],
        input_format=cfg.INPUT.FORMAT,
        dataset=cfg.DATASETS.TEST[0],
        config_file=config_file,
    )
