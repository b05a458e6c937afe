"""The shipped LazyConfigs, by name, from a source checkout or an installed package.

``configs/`` of the repository is installed as package data of this module (in a checkout,
``mvit_det/model_zoo/configs`` is a symlink to it), so ``get_config("mask_rcnn_mvitv2_b.py")``
works wherever mvit_det is importable; the published recipes by their folder, e.g.
``get_config("published/cascade_mask_rcnn_mvitv2_b_3x.py")`` or
``get_config("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py")``. The configs of
``projects/<name>/configs`` (in a checkout, ``mvit_det/model_zoo/projects`` links to
``projects/``) are named by their repository path, e.g.
``get_config("projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py")``.
"""

import os
from typing import List

from detectron2.config import LazyConfig
from omegaconf import DictConfig

__all__ = ["get_config", "get_config_file", "list_configs", "resolve_config_file"]

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
