"""Reading config files without running code from them.

A YAML file can ask its loader to build Python objects: ``!!python/object/apply:os.system`` calls
a function while the file is read. Detectron2 reads yacs YAMLs with ``allow_unsafe=True`` (its
``CfgNode.merge_from_file`` default) and LazyConfig YAMLs with ``yaml.unsafe_load``, so such a
tag runs code as soon as the file is loaded. The functions here read YAML configs with a safe
loader instead, unless ``trust=True``:

- yacs YAMLs (``get_cfg()`` configs, with ``_BASE_`` files): plain YAML only, as yacs writes them;
- LazyConfig YAMLs (e.g. the ``config.yaml`` a training run writes): plain YAML plus what
  Detectron2's ``LazyConfig.save`` writes for the shipped configs: tuples, ``ShapeSpec`` and
  ``functools.partial`` of a module class (``norm_layer``, ``norm``) with plain arguments, where
  the class is an ``nn.Module`` of ``torch.nn``, Detectron2 or mvit_det.

A LazyConfig, ``.py`` or ``.yaml``, is code by nature all the same: a ``.py`` file runs when it
is loaded, and the ``_target_`` of every node names a callable that ``instantiate`` calls when
the model is built. Only the loading of a YAML file is made safe here; use configs from sources
you trust.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
from typing import Any

import torch.nn as nn
import yaml
from detectron2.config import CfgNode, LazyConfig
from detectron2.layers import ShapeSpec
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "UnsafeConfigError",
    "add_trust_config_argument",
    "is_yaml",
    "load_lazy_config",
    "merge_yacs_file",
    "read_lazy_yaml",
    "yaml_config_kind",
]

YAML_SUFFIXES = (".yaml", ".yml")
_YAML_TAG = "tag:yaml.org,2002:"
_PYTHON_TAG = _YAML_TAG + "python/"
# Where the module classes that a LazyConfig YAML may name (``norm_layer``, ``norm``) come from.
_MODULE_CLASS_PACKAGES = ("torch.nn", "detectron2.layers", "detectron2.modeling", "mvit_det")
TRUST_CONFIG_HELP = (
    "read YAML configs with YAML's full loader, which builds any Python object the file names "
    "(!!python/... tags) and so can run code; only for files from a trusted source"
)


class UnsafeConfigError(ValueError):
    """A YAML config would build Python objects while it is read, and it is not trusted."""


def add_trust_config_argument(parser: argparse.ArgumentParser) -> None:
    """
    Adds ``--trust-config`` (``args.trust_config``), the opt-in to read YAML configs in full.

    Args:
        parser: a tool's argument parser.
    """
    parser.add_argument("--trust-config", action="store_true", help=TRUST_CONFIG_HELP)


def _unsafe(path: str, where: str, line: int, tag: str, what: str) -> UnsafeConfigError:
    """The error for a refused tag: file, line, tag, why, and the opt-in."""
    tag = "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag
    return UnsafeConfigError(
        f"config {path!r} was not loaded: {where} line {line} has the YAML tag {tag} ({what}), "
        "and building Python objects while reading a file can run code. If you trust where the "
        "file comes from, read it in full with --trust-config (command-line tools) or "
        "trust=True; otherwise remove the tag"
    )


def _refusal(path: str, node: yaml.Node, what: str) -> UnsafeConfigError:
    return _unsafe(path, os.path.basename(path), node.start_mark.line + 1, node.tag, what)


class _LazyConfigLoader(yaml.SafeLoader):
    """Safe YAML plus the Python objects ``LazyConfig.save`` writes for mvit_det's configs."""

    path = ""  # the file being read, for error messages


def _tuple(loader: _LazyConfigLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


def _module_class(loader: _LazyConfigLoader, node: yaml.Node, name: str) -> type:
    """A ``torch.nn.Module`` class of torch.nn, Detectron2's layers or modeling, or mvit_det,
    named by ``!!python/name:``; other names are refused without importing anything."""
    module_name, _, attribute = name.rpartition(".")
    if any(module_name == p or module_name.startswith(p + ".") for p in _MODULE_CLASS_PACKAGES):
        value = getattr(importlib.import_module(module_name), attribute, None)
        if isinstance(value, type) and issubclass(value, nn.Module):
            return value
    raise _refusal(
        loader.path, node, f"{name} is not a module class of {', '.join(_MODULE_CLASS_PACKAGES)}"
    )


def _name(loader: _LazyConfigLoader, suffix: str, node: yaml.Node) -> type:
    return _module_class(loader, node, suffix)


def _python_object(loader: _LazyConfigLoader, suffix: str, node: yaml.Node) -> Any:
    """``!!python/object:<class>``: only Detectron2's ShapeSpec, from integer fields."""
    if suffix != "detectron2.layers.shape_spec.ShapeSpec" or not isinstance(node, yaml.MappingNode):
        raise _refusal(loader.path, node, "an object of a class that is not plain data")
    fields = loader.construct_mapping(node, deep=True)
    if set(fields) - set(ShapeSpec.__dataclass_fields__) or not all(
        v is None or isinstance(v, int) for v in fields.values()
    ):
        raise _refusal(loader.path, node, f"a ShapeSpec with fields {fields!r}")
    return ShapeSpec(**fields)


def _python_apply(loader: _LazyConfigLoader, suffix: str, node: yaml.Node) -> Any:
    """``!!python/object/apply:functools.partial`` of a module class only, with plain arguments
    (as ``norm_layer=partial(nn.LayerNorm, eps=1e-6)`` is saved)."""
    if suffix != "functools.partial" or not isinstance(node, yaml.MappingNode):
        raise _refusal(loader.path, node, f"a call of {suffix}")
    value = loader.construct_mapping(node, deep=True)
    args = value.get("args") or []
    state = value.get("state")
    if set(value) - {"args", "state"} or len(args) != 1:
        raise _refusal(loader.path, node, "a functools.partial that is not saved by LazyConfig")
    func = args[0]
    if state is None:
        bound, keywords = (), {}
    elif isinstance(state, tuple) and len(state) == 4 and state[0] is func and not state[3]:
        _, bound, keywords, _ = state  # (func, args, keywords, __dict__), as partial pickles
        bound, keywords = bound or (), keywords or {}
    else:
        raise _refusal(loader.path, node, "a functools.partial whose state is not plain")
    plain = (int, float, str, bool, type(None))
    if not (
        isinstance(func, type)
        and issubclass(func, nn.Module)
        and isinstance(bound, tuple)
        and isinstance(keywords, dict)
        and all(isinstance(a, plain) for a in bound)
        and all(isinstance(k, str) and isinstance(v, plain) for k, v in keywords.items())
    ):
        raise _refusal(loader.path, node, "a functools.partial of other than a module class")
    return functools.partial(func, *bound, **keywords)


def _refuse_python(loader: _LazyConfigLoader, suffix: str, node: yaml.Node) -> Any:
    raise _refusal(loader.path, node, "a Python object")


_LazyConfigLoader.add_constructor(_PYTHON_TAG + "tuple", _tuple)
_LazyConfigLoader.add_multi_constructor(_PYTHON_TAG + "name:", _name)
_LazyConfigLoader.add_multi_constructor(_PYTHON_TAG + "object:", _python_object)
_LazyConfigLoader.add_multi_constructor(_PYTHON_TAG + "object/apply:", _python_apply)
_LazyConfigLoader.add_multi_constructor(_PYTHON_TAG, _refuse_python)


def read_lazy_yaml(path: str, trust: bool = False) -> DictConfig:
    """
    Reads a LazyConfig YAML (as ``LazyConfig.load`` does for ``.yaml``), safely unless trusted.

    Args:
        path: the ``.yaml`` file.
        trust: read it with YAML's full loader (``yaml.unsafe_load``, Detectron2's choice).

    Returns:
        the config.

    Raises:
        UnsafeConfigError: a ``!!python/...`` tag beyond the few that :mod:`this module
            <mvit_det.config.safe_yaml>` allows, and ``trust`` is False.
        yaml.YAMLError: not valid YAML.
    """
    if trust:
        return LazyConfig.load(path)
    with open(path, encoding="utf-8") as f:
        loader = _LazyConfigLoader(f.read())
    loader.path = path
    try:
        content = loader.get_single_data()
    finally:
        loader.dispose()
    if not isinstance(content, dict):
        raise ValueError(
            f"config {path!r} is not a LazyConfig: it holds a {type(content).__name__}, not a "
            "mapping"
        )
    return OmegaConf.create(content, flags={"allow_objects": True})


def load_lazy_config(path: str, trust: bool = False) -> DictConfig:
    """
    ``LazyConfig.load`` with YAML files read safely: the one way mvit_det's tools load a
    LazyConfig.

    Args:
        path: a ``.py`` LazyConfig (Python code: it runs, whatever ``trust`` says) or a LazyConfig
            ``.yaml`` (read by :func:`read_lazy_yaml`).
        trust: read a YAML file with YAML's full loader.

    Returns:
        the config.

    Raises:
        UnsafeConfigError: see :func:`read_lazy_yaml`.
    """
    if path.endswith(YAML_SUFFIXES):
        return read_lazy_yaml(path, trust)
    return LazyConfig.load(path)


def merge_yacs_file(cfg: CfgNode, path: str, trust: bool = False) -> CfgNode:
    """
    ``cfg.merge_from_file(path)`` with plain YAML only (for the file and its ``_BASE_`` files)
    unless trusted; Detectron2's own default is ``allow_unsafe=True``.

    Args:
        cfg: a config from ``get_cfg()``.
        path: the yacs YAML.
        trust: allow ``!!python/...`` tags (``allow_unsafe=True``).

    Returns:
        the same config.

    Raises:
        UnsafeConfigError: a ``!!python/...`` tag in the file or a base, and ``trust`` is False.
    """
    try:
        cfg.merge_from_file(path, allow_unsafe=trust)
    except yaml.constructor.ConstructorError as e:
        if trust or e.problem_mark is None:
            raise
        mark = e.problem_mark
        found = re.search(r"tag '([^']+)'", e.problem or "")
        tag = found.group(1) if found else "?"
        raise _unsafe(
            path, mark.name, mark.line + 1, tag, "yacs configs hold plain values only"
        ) from None
    return cfg


def yaml_config_kind(path: str) -> str:
    """
    Whether a YAML file is a yacs config or a LazyConfig, from its top-level keys, without
    building any object it names.

    Args:
        path: the ``.yaml`` file.

    Returns:
        "lazy" when it has a lower-case ``model`` key and no upper-case keys (what
        ``LazyConfig.save`` writes), else "yacs" (``MODEL``, ``_BASE_``, ...).
    """
    with open(path, encoding="utf-8") as f:
        node = yaml.compose(f, Loader=yaml.SafeLoader)  # the node tree only: nothing is built
    if not isinstance(node, yaml.MappingNode):
        return "yacs"
    keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
    if "model" in keys and not any(k.isupper() for k in keys):  # _BASE_, MODEL, ...
        return "lazy"
    return "yacs"


def is_yaml(path: str) -> bool:
    """Whether ``path`` names a YAML file (``.yaml`` / ``.yml``)."""
    return os.path.splitext(path)[1].lower() in YAML_SUFFIXES
