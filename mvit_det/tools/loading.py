"""A detector from a LazyConfig (``.py`` or ``.yaml``) or a yacs config (``.yaml``) plus weights,
for the tools and :class:`mvit_det.Predictor`.

All kinds give the model, its test-time resize and image format, and the metadata (class names,
COCO category ids) of its test dataset, so that predict, evaluate, export and analyze treat them
alike. Weights and YAML configs are read without running code from them unless the tool is given
``--trust-checkpoint`` / ``--trust-config`` (a ``.py`` LazyConfig is Python code and runs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml
from detectron2.config import get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from omegaconf import DictConfig, OmegaConf
from yacs.config import CfgNode

from ..checkpoint import BackboneCheckpointer, CheckpointError, LoadingSummary
from ..config.safe_yaml import (
    UnsafeConfigError,
    add_trust_config_argument,
    is_yaml,
    load_lazy_config,
    merge_yacs_file,
    yaml_config_kind,
)
from ..data import dataset_names
from ..engine import ConfigOverrideError, apply_overrides_checked
from ..model_zoo import resolve_config_file

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "ConfigSource",
    "LoadedModel",
    "ToolError",
    "add_image_size_argument",
    "add_model_arguments",
    "add_trust_checkpoint_argument",
    "build_detector",
    "building_on",
    "check_device",
    "load_model",
    "parse_hw",
    "parse_image_size",
    "synthetic_input",
]

TRUST_CHECKPOINT_HELP = (
    "unpickle Python objects of any kind from the weights (by default only tensors and plain "
    "data are read); only for files from a trusted source, since unpickling can run arbitrary "
    "code"
)
# The synthetic image of export and analyze when no --image-size is given: a typical COCO image
# (480x640), which the config's test resize then scales, as Detectron2's analyze_model.py feeds
# dataset images through the test mapper.
DEFAULT_IMAGE_SIZE = (480, 640)
# What names a detector: a config file (path or shipped name), a loaded LazyConfig or a yacs node.
ConfigSource = Union[str, "os.PathLike[str]", DictConfig, CfgNode]
# LoadedModel.config_file of a model built from a config object.
IN_MEMORY = "<config object>"


class ToolError(RuntimeError):
    """A problem with a tool's arguments or files that the user must fix (exit status 2); in
    Python (:class:`mvit_det.Predictor`, ``mvit_det.model_zoo.get``), a config that cannot be
    built."""


@dataclass
class LoadedModel:
    """
    Attributes:
        model: the detector, in eval mode, on its device.
        augmentations: the test-time resize of the config.
        input_format: channel order the model expects ("RGB" or "BGR").
        dataset: the config's test dataset (for metadata and evaluation).
        config_file: the resolved config path (``"<config object>"`` for a config object).
        loading: what loading the weights did with each tensor, expected and surprising
            (None without weights, or for a model without a backbone of a registered family).
    """

    model: torch.nn.Module
    augmentations: List[T.Augmentation]
    input_format: str
    dataset: str
    config_file: str
    loading: Optional[LoadingSummary] = None

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


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """
    Adds ``--trust-checkpoint`` (``args.trust_checkpoint``), the one definition every tool that
    reads weights shares.

    Args:
        parser: a tool's argument parser.
    """
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)


def add_model_arguments(parser: argparse.ArgumentParser, weights_required: bool) -> None:
    """
    The ``--config``, ``--weights``, ``--device``, ``--trust-checkpoint``, ``--trust-config`` and
    ``--opts`` (last) options.

    Args:
        parser: a tool's argument parser.
        weights_required: whether ``--weights`` must be given.
    """
    parser.add_argument(
        "--config",
        required=True,
        help="LazyConfig (.py: a path or shipped name such as mask_rcnn_mvitv2_t.py; or the "
        ".yaml a training run saves) or yacs config (.yaml, e.g. "
        "configs/yacs/mask_rcnn_mvitv2_t.yaml)",
    )
    parser.add_argument(
        "--weights",
        required=weights_required,
        default="",
        help="checkpoint: path or URL, any format BackboneCheckpointer reads",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_trust_checkpoint_argument(parser)
    add_trust_config_argument(parser)
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


def build_detector(
    config: ConfigSource,
    device: str = "cpu",
    opts: Sequence[str] = (),
    *,
    trust_config: bool = False,
) -> LoadedModel:
    """
    Builds the detector of a config, with its initial weights, in eval mode.

    Args:
        config: a LazyConfig (``.py`` path or shipped name, or a LazyConfig ``.yaml`` such as the
            ``config.yaml`` of a training run), a yacs ``.yaml``, or a config object: a loaded
            LazyConfig (``DictConfig``) or a yacs ``CfgNode``, which is copied, not changed.
        device: "cpu", "cuda", "cuda:1", ...; "meta" builds the model without allocating or
            initialising its weights (shapes and parameter counts only).
        opts: overrides, ``key=value`` (LazyConfig) or ``KEY VALUE`` pairs (yacs).
        trust_config: read a YAML config with YAML's full loader (``!!python/...`` tags).

    Returns:
        the model and its preprocessing.

    Raises:
        ToolError: unknown or unsafe config, a config without a test dataset and resize, bad
            override, no CUDA.
    """
    check_device(device)
    if isinstance(config, DictConfig):
        return _eval(_load_lazy(copy.deepcopy(config), IN_MEMORY, device, opts))
    if isinstance(config, CfgNode):
        return _eval(_load_yacs_cfg(config.clone(), IN_MEMORY, device, opts))
    if not isinstance(config, (str, os.PathLike)):
        raise ToolError(
            f"config must be a path or shipped config name, a LazyConfig (DictConfig) or a yacs "
            f"CfgNode, not {type(config).__name__}"
        )
    try:
        config_file = resolve_config_file(os.fspath(config))
    except FileNotFoundError as e:
        raise ToolError(str(e)) from None
    try:
        if is_yaml(config_file) and yaml_config_kind(config_file) == "yacs":
            loaded = _load_yacs(config_file, device, opts, trust_config)
        else:
            loaded = _load_lazy(
                load_lazy_config(config_file, trust_config), config_file, device, opts
            )
    except UnsafeConfigError as e:
        raise ToolError(str(e)) from None
    except yaml.YAMLError as e:
        raise ToolError(f"config {config_file} is not valid YAML: {e}") from None
    return _eval(loaded)


def _eval(loaded: LoadedModel) -> LoadedModel:
    loaded.model.eval()
    return loaded


def load_model(
    config: ConfigSource,
    weights: str = "",
    device: str = "cpu",
    opts: Sequence[str] = (),
    *,
    trust_checkpoint: bool = False,
    trust_config: bool = False,
) -> LoadedModel:
    """
    Builds the detector of a config and loads its weights.

    Args:
        config: see :func:`build_detector`.
        weights: checkpoint path or URL; "" keeps the initialisation (analysis only).
        device: "cpu", "cuda", "cuda:1", ...
        opts: overrides, ``key=value`` (LazyConfig) or ``KEY VALUE`` pairs (yacs).
        trust_checkpoint: unpickle Python objects of any kind from the weights.
        trust_config: read a YAML config with YAML's full loader (``!!python/...`` tags).

    Returns:
        the loaded model and its preprocessing. The loading summary of the weights (see
        :class:`~mvit_det.checkpoint.summary.LoadingSummary`) is printed and kept as
        ``loading``.

    Raises:
        ToolError: unknown or unsafe config, bad override, unreadable, unsafe or unfitting
            weights, no CUDA.
    """
    loaded = build_detector(config, device, opts, trust_config=trust_config)
    if weights:
        checkpointer = BackboneCheckpointer(
            loaded.model, trust=trust_checkpoint, log_summary=False
        )  # printed below
        error = ""
        try:
            checkpointer.load(weights)
        except CheckpointError as e:
            error = str(e)
        # Also when loading stopped at missing backbone keys: the summary shows them.
        loaded.loading = checkpointer.last_summary
        if loaded.loading is not None:
            print(loaded.loading.format(), file=sys.stdout, flush=True)
        if error:
            raise ToolError(error)
    return loaded


def building_on(device: str) -> ContextManager[Any]:
    """Where modules are created: the meta device for "meta" (no memory, no initialisation),
    otherwise the CPU, as before (the model is moved to its device once built)."""
    return torch.device("meta") if device == "meta" else contextlib.nullcontext()


def _load_lazy(cfg: Any, config_file: str, device: str, opts: Sequence[str]) -> LoadedModel:
    try:
        apply_overrides_checked(cfg, opts)
    except ConfigOverrideError as e:
        raise ToolError(str(e)) from None
    for key in ("model", "dataloader.test.mapper", "dataloader.test.dataset.names"):
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ToolError(
                f"the LazyConfig {config_file} has no {key}: a detector config needs the model "
                "and its test data (dataloader.test: the test resize, image format and dataset), "
                "as the shipped configs have"
            )
    test = cfg.dataloader.test
    with building_on(device):
        model = instantiate(cfg.model)
    return LoadedModel(
        model=model.to(device),
        augmentations=[instantiate(a) for a in test.mapper.augmentations],
        input_format=test.mapper.image_format,
        dataset=dataset_names(test.dataset.names)[0],
        config_file=config_file,
    )


def _load_yacs(config_file: str, device: str, opts: Sequence[str], trust: bool) -> LoadedModel:
    cfg = get_cfg()  # has MODEL.MVIT / MODEL.VIL: importing mvit_det adds them to the defaults
    try:
        merge_yacs_file(cfg, config_file, trust)
    except UnsafeConfigError:
        raise  # its own message (load_model turns it into a ToolError)
    except (KeyError, ValueError, AssertionError) as e:
        raise ToolError(f"yacs config {config_file} with overrides {list(opts)}: {e}") from None
    return _load_yacs_cfg(cfg, config_file, device, opts)


def _load_yacs_cfg(cfg: CfgNode, config_file: str, device: str, opts: Sequence[str]) -> LoadedModel:
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ToolError(f"yacs config {config_file} with overrides {list(opts)}: {e}") from None
    cfg.MODEL.DEVICE = device
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    with building_on(device):
        model = build_model(cfg)
    return LoadedModel(
        model=model,
        augmentations=[resize],
        input_format=cfg.INPUT.FORMAT,
        dataset=cfg.DATASETS.TEST[0],
        config_file=config_file,
    )


def parse_hw(text: str, square: bool = False) -> Tuple[int, int]:
    """
    A size given as ``HxW`` (e.g. ``800x1216``), or with ``square`` also as ``N`` (``NxN``), as
    (H, W); the one parser of the tools' image sizes.

    Args:
        text: the size as written on a command line.
        square: accept a single ``N``.

    Returns:
        (H, W), both >= 1.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    form = "N or HxW" if square else "HxW"
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) != 2 and not (square and len(sides) == 1):
        raise argparse.ArgumentTypeError(f"expected {form} such as 800x1216, got {text!r}")
    if min(sides) < 1:
        raise argparse.ArgumentTypeError(f"sides must be >= 1, got {text!r}")
    return sides[0], sides[-1]


def parse_image_size(text: str) -> Tuple[int, int]:
    """``HxW`` as (H, W), for argparse (see :func:`parse_hw`)."""
    return parse_hw(text)


def add_image_size_argument(parser: argparse.ArgumentParser) -> None:
    """
    Adds ``--image-size HxW`` (``args.image_size``, None when not given), shared by export and
    analyze.

    Args:
        parser: a tool's argument parser.
    """
    h, w = DEFAULT_IMAGE_SIZE
    parser.add_argument(
        "--image-size",
        type=parse_image_size,
        default=None,
        metavar="HxW",
        help="the size of the image the model is given, exactly (the config's test resize is "
        f"not applied; the model pads it to its size divisibility). Default: a {h}x{w} image "
        "after the config's test resize, as a dataset image through the test mapper",
    )


def synthetic_input(
    loaded: LoadedModel, image_size: Optional[Tuple[int, int]]
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """
    One random image as a model input, for export and analysis.

    Args:
        loaded: the model and its preprocessing.
        image_size: (H, W) of the model input, exactly (no test resize); None for a
            :data:`DEFAULT_IMAGE_SIZE` image after the config's test resize.

    Returns:
        the model input (``{"image": (3, H, W) tensor in the model's format, "height", "width"}``)
        and what to record: ``{"requested_image_size": [H, W] or None, "input_size": [H, W] of the
        image the model gets, before its padding}``.
    """
    size = image_size or DEFAULT_IMAGE_SIZE
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)  # (H, W, 3)
    if image_size is None:
        model_input = loaded.model_input(image)
    else:
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        model_input = {"image": tensor.to(loaded.device), "height": size[0], "width": size[1]}
    used = list(model_input["image"].shape[-2:])
    record = {"requested_image_size": list(image_size) if image_size else None, "input_size": used}
    return model_input, record
