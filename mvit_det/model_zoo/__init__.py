"""The shipped LazyConfigs, by name, from a source checkout or an installed package; and the
models by name (:func:`get`, which the torch.hub entry points of ``hubconf.py`` call).

``configs/`` of the repository is installed as package data of this module (in a checkout,
``mvit_det/model_zoo/configs`` is a symlink to it), so ``get_config("mask_rcnn_mvitv2_b.py")``
works wherever mvit_det is importable; the published recipes by their folder, e.g.
``get_config("published/cascade_mask_rcnn_mvitv2_b_3x.py")`` or
``get_config("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py")``. The configs of
``projects/<name>/configs`` (in a checkout, ``mvit_det/model_zoo/projects`` links to
``projects/``) are named by their repository path, e.g.
``get_config("projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py")``.

Models by name (:func:`list_models`): every preset of every registered backbone family
(``mvitv2_t`` .. ``mvitv2_h``, ``vil_t`` .. ``vil_bw``), and a detector for every shipped
config, named by its file name (``mask_rcnn_mvitv2_t``, ``cascade_mask_rcnn_mvitv2_b``,
``mask_rcnn_vil_s_1x``, ``mask_rcnn_mvitv2_shapes``, the published recipes such as
``cascade_mask_rcnn_mvitv2_b_3x``, and the LVIS ones as ``lvis_<file name>``).
"""

from __future__ import annotations

import ast
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from detectron2.config import LazyConfig
from omegaconf import DictConfig

if TYPE_CHECKING:  # imported where used: the modeling packages import this module's configs
    import torch.nn as nn

    from ..modeling.backbones.registry import BackboneFamily, PretrainedWeights

__all__ = [
    "describe",
    "get",
    "get_config",
    "get_config_file",
    "list_configs",
    "list_models",
    "load_weights",
    "pretrained_weights",
    "resolve_config_file",
]

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))
_CONFIG_ROOT = os.path.join(_PACKAGE_ROOT, "configs")
_PROJECTS = "projects"


def _config_names(root: str, prefix: str) -> List[str]:
    """The configs under ``root`` (without its ``common/`` folder), named ``prefix + relpath``."""
    names = []
    for folder, _, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(folder, root)
        if rel.split(os.sep)[0] == "common":
            continue
        names += [
            prefix + os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")
        ]
    return names


def list_configs() -> List[str]:
    """Names of all shipped configs: relative to the config root for ``configs/`` (e.g.
    "mask_rcnn_mvitv2_b.py"), the repository path for projects (e.g.
    "projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py")."""
    names = _config_names(_CONFIG_ROOT, "")
    projects = os.path.join(_PACKAGE_ROOT, _PROJECTS)
    for project in sorted(os.listdir(projects)) if os.path.isdir(projects) else []:
        configs = os.path.join(projects, project, "configs")
        names += _config_names(configs, f"{_PROJECTS}/{project}/configs/")
    return sorted(names)


def _shipped_path(name: str) -> str:
    """Where a shipped config of this name would be (it may not exist)."""
    if name.startswith(_PROJECTS + "/"):
        return os.path.join(_PACKAGE_ROOT, name)
    return os.path.join(_CONFIG_ROOT, name)


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config.

    Args:
        config_path: name relative to the config root, e.g. "cascade_mask_rcnn_mvitv2_t.py" or
            "demo/mask_rcnn_mvitv2_shapes.py", or a project config's repository path, e.g.
            "projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py".
    """
    path = _shipped_path(config_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"'{config_path}' is not a shipped mvit_det config. Available: "
            + ", ".join(list_configs())
        )
    return path


def get_config(config_path: str) -> DictConfig:
    """Loads a shipped LazyConfig.

    Args:
        config_path: see :func:`get_config_file`.
    """
    return LazyConfig.load(get_config_file(config_path))


def resolve_config_file(config: str) -> str:
    """
    The config file a command-line argument names: a path, or the name of a shipped config
    (``mask_rcnn_mvitv2_b.py``, ``demo/mask_rcnn_mvitv2_shapes.py``,
    ``projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py``; ``configs/`` in front and the ``.py``
    suffix may be left out). Every tool resolves its config argument with this.

    Args:
        config: path or shipped name.

    Returns:
        the path of an existing file.

    Raises:
        FileNotFoundError: neither a file nor a shipped config; the message lists the shipped
            ones.
    """
    if os.path.isfile(config):
        return config
    name = config[len("configs/") :] if config.startswith("configs/") else config
    for candidate in (name, name + ".py"):
        if os.path.isfile(_shipped_path(candidate)):
            return _shipped_path(candidate)
    raise FileNotFoundError(
        f"config '{config}' is neither a file nor a shipped config. Give a path, or one of: "
        + ", ".join(list_configs())
    )


# ---------------------------------------------------------------- models by name

# Config folders whose configs are named by their file name alone; configs in other folders
# (published/LVIS/) get the folder's name in front (lvis_...), as their file names repeat others.
_PLAIN_FOLDERS = ("", "demo", "published", "COCO")


def _backbone_models() -> Dict[str, Tuple["BackboneFamily", str]]:
    """Backbone model name -> (family, preset), for every preset of every registered family."""
    from ..modeling.backbones import families

    return {name: (f, size) for f in families() for name, size in f.model_names().items()}


def _detector_models() -> Dict[str, str]:
    """Detector model name -> shipped config name, for every shipped config."""
    models: Dict[str, str] = {}
    for config in list_configs():
        folder, file_name = os.path.split(config)
        stem = file_name[: -len(".py")]
        parent = os.path.basename(folder)
        name = stem if parent in _PLAIN_FOLDERS else f"{parent.lower()}_{stem}"
        if name in models:
            raise RuntimeError(
                f"two shipped configs have the model name {name!r}: {models[name]} and {config}"
            )
        models[name] = config
    return models


def list_models() -> List[str]:
    """
    The names :func:`get` (and torch.hub) take: the backbones (every preset of every registered
    family, ``<prefix>_<size>``) and a detector per shipped config (its file name without
    ``.py``; ``lvis_`` in front for ``published/LVIS/``), sorted.
    """
    backbones = _backbone_models()
    detectors = _detector_models()
    clashes = sorted(set(backbones) & set(detectors))
    if clashes:
        raise RuntimeError(f"backbone and detector model names clash: {clashes}")
    return sorted(backbones) + sorted(detectors)


def _unknown_model(name: str) -> ValueError:
    return ValueError(
        f"no model {name!r}, and no config of that name or path. Backbones: "
        f"{', '.join(sorted(_backbone_models()))}. Detectors: "
        f"{', '.join(sorted(_detector_models()))}. A detector may also be named by any config "
        "path or shipped config name (list_configs())"
    )


def pretrained_weights(name: str) -> Optional["PretrainedWeights"]:
    """
    The published weights that ``get(name, pretrained=True)`` loads, or None where none are
    recorded (every detector, and backbone sizes without published weights).

    Args:
        name: a model name (:func:`list_models`).

    Raises:
        ValueError: an unknown name.
    """
    backbones = _backbone_models()
    if name in backbones:
        family, size = backbones[name]
        return family.pretrained.get(size)
    if name in _detector_models():
        return None
    raise _unknown_model(name)


def describe(name: str) -> str:
    """
    One paragraph on a model (the docstring of its torch.hub entry point): what it builds and
    which weights ``pretrained=True`` loads. Builds nothing.

    Args:
        name: a model name (:func:`list_models`).
    """
    backbones, detectors = _backbone_models(), _detector_models()
    if name in backbones:
        family, size = backbones[name]
        cls = family.backbone
        text = (
            f"{family.title} backbone, preset {size!r} ({cls.__module__}.{cls.__name__}, a "
            "Detectron2 Backbone with outputs scale2..scale5), in eval mode."
        )
    elif name in detectors:
        config = detectors[name]
        with open(get_config_file(config), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        summary = doc.strip().split("\n\n")[0].replace("\n", " ")
        text = f"Detector of the shipped config {config}, in eval mode. {summary}".strip()
    else:
        raise _unknown_model(name)
    weights = backbones[name][0].pretrained.get(backbones[name][1]) if name in backbones else None
    if weights is None:
        text += " pretrained=True: no published weights are recorded; pass weights=<path or URL>."
    else:
        pin = (
            f"pinned by SHA-256 {weights.sha256}"
            if weights.sha256
            else "unpinned: no SHA-256 known"
        )
        text += f" pretrained=True: {weights.description} weights, {weights.url}, {pin}."
    return (
        text + " Args: pretrained, weights (path or URL, any format BackboneCheckpointer reads), "
        "device, trust_checkpoint; backbones take the backbone's arguments as keywords, detectors "
        "config overrides as opts=[...]. See mvit_det.model_zoo.get."
    )


def load_weights(model: "nn.Module", weights: str, *, trust_checkpoint: bool = False) -> None:
    """
    Loads a checkpoint into a model with :class:`~mvit_det.BackboneCheckpointer` (every layout
    its family reads, without running code from the file unless trusted). A URL without a
    ``#sha256=<hex>`` suffix loads, and a warning says that it is not pinned.

    Args:
        model: a detector or a backbone.
        weights: path or URL (``#sha256=<64 hex digits>`` pins the file's digest).
        trust_checkpoint: unpickle Python objects of any kind from the file (only for files from
            a trusted source: unpickling can run arbitrary code).

    Raises:
        CheckpointError: unreadable, unsafe or unfitting weights, or a digest that differs.
    """
    from ..checkpoint import BackboneCheckpointer

    if "://" in weights and "#sha256=" not in weights:
        logger.warning(
            f"{weights} is not pinned: no SHA-256 is known for it, so the download is checked as "
            "a checkpoint but not against a digest (append #sha256=<64 hex digits> to pin it)"
        )
    BackboneCheckpointer(model, trust=trust_checkpoint).load(weights)


def get(
    name: str,
    weights: Optional[str] = None,
    device: str = "cpu",
    *,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    opts: Sequence[str] = (),
    **backbone_kwargs: Any,
) -> "nn.Module":
    """
    A model by name, built and with its weights loaded, in eval mode.

    Args:
        name: a backbone (``mvitv2_t`` .. ``mvitv2_h``, ``vil_t`` .. ``vil_bw``: every preset of
            every registered family), a detector (a shipped config's file name without ``.py``,
            e.g. ``mask_rcnn_mvitv2_t``, ``cascade_mask_rcnn_mvitv2_b``, ``mask_rcnn_vil_s_1x``;
            :func:`list_models`), or any config path or shipped config name (a detector).
        weights: checkpoint path or URL (``#sha256=<hex>`` pins a URL's digest), in any format
            :class:`~mvit_det.BackboneCheckpointer` reads; None keeps the initialisation.
        device: "cpu", "cuda", ...; "meta" builds the model without allocating or initialising
            its weights (shapes and parameter counts only; no weights can be loaded).
        pretrained: load the published weights recorded for the model
            (:func:`pretrained_weights`: the ImageNet weights of the backbones; none for the
            detectors, which then raise ValueError).
        trust_checkpoint: unpickle Python objects of any kind from the weights (only for files
            from a trusted source).
        opts: config overrides of a detector, ``key=value`` (LazyConfig) or ``KEY VALUE``
            (yacs).
        backbone_kwargs: arguments of a backbone that replace its preset's (e.g.
            ``attn_impl="eager"``, ``out_features=("scale5",)``).

    Returns:
        the backbone (:class:`~mvit_det.MViT`, :class:`~mvit_det.ViL`, ...) or the detector
        (Detectron2's ``GeneralizedRCNN``, ``RetinaNet``), in eval mode, on ``device``.

    Raises:
        ValueError: an unknown name (the message lists the names), ``pretrained`` for a model
            without recorded weights or together with ``weights``, weights on the meta device,
            or arguments of the wrong kind for the model.
        ToolError: a config that cannot be built, or CUDA asked for but absent.
        CheckpointError: unreadable, unsafe or unfitting weights.
    """
    from ..tools.loading import build_detector, building_on, check_device

    if pretrained and weights:
        raise ValueError("give either pretrained=True or weights=..., not both")
    backbones = _backbone_models()
    detectors = _detector_models()
    config = ""
    if name in backbones:
        if opts:
            raise ValueError(
                f"{name} is a backbone: it takes its arguments as keywords, not opts (config "
                "overrides of detectors)"
            )
    else:
        if backbone_kwargs:
            raise ValueError(
                f"{name} is a detector: unexpected arguments {sorted(backbone_kwargs)}; give "
                "config overrides as opts=[...]"
            )
        try:
            config = detectors[name] if name in detectors else resolve_config_file(name)
        except FileNotFoundError:
            raise _unknown_model(name) from None
    if pretrained:
        record = pretrained_weights(name) if name in backbones or name in detectors else None
        if record is None:
            raise ValueError(
                f"no published weights are recorded for {name!r}; pass weights=<path or URL>. "
                "Models with recorded weights: "
                + ", ".join(n for n in list_models() if pretrained_weights(n) is not None)
            )
        weights = record.pinned_url()  # load_weights logs it when unpinned
    if weights and device == "meta":
        raise ValueError("weights cannot be loaded on the meta device; build on cpu or cuda")

    if name in backbones:
        check_device(device)
        family, size = backbones[name]
        with building_on(device):
            model = family.backbone(**family.preset(size, **backbone_kwargs))
        model.to(device)
    else:
        model = build_detector(config, device, opts).model
    if weights:
        load_weights(model, weights, trust_checkpoint=trust_checkpoint)
    model.eval()
    return model
