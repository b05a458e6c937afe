"""Command-line ``key=value`` overrides of LazyConfigs that reject unknown keys and wrong types.

Detectron2's ``LazyConfig.apply_overrides`` creates any key it is given, so a typo such as
``train.max_iterr=10`` is silently ignored, and it takes any value, so ``train.max_iter=abc``
fails much later. Here a key must exist in the config, or be an argument of the callable of an
``L(...)`` node (``model.backbone.bottom_up.attn_impl=sdpa``), or lie under the free-form
``datasets`` node; and a value replacing a number or a boolean (in the config, or as the
argument's default) must be one too.
"""

import difflib
import inspect
from typing import Any, Dict, Iterable, Optional

from detectron2.config import LazyConfig
from detectron2.utils.registry import _convert_target_to_string, locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["apply_overrides_checked", "ConfigOverrideError"]

# Top-level nodes whose children are free-form names (see mvit_det.data.register_datasets...).
_OPEN_NODES = ("datasets",)
# What a key holds when nothing is known about its type.
_UNKNOWN = object()


class ConfigOverrideError(ValueError):
    """A ``key=value`` override that does not fit the config."""


def _callable_params(target: Any) -> Optional[Dict[str, Any]]:
    """Argument names of an L(...) node's target with their defaults (``_UNKNOWN`` if none);
    None if it takes **kwargs or is unknown."""
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:
            return None
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name: _UNKNOWN if p.default is inspect.Parameter.empty else p.default
        for p in params
        if p.kind != inspect.Parameter.VAR_POSITIONAL
    }


def _check_key(cfg: DictConfig, key: str) -> Any:
    """Checks that ``key`` may be set; returns what it holds now (or its argument's default),
    ``_UNKNOWN`` when that is not known."""
    parts = key.split(".")
    if parts[0] in _OPEN_NODES:
        return _UNKNOWN
    node: Any = cfg
    for depth, part in enumerate(parts):
        path = ".".join(parts[:depth]) or "<root>"
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigOverrideError(
                    f"Config key '{key}': '{path}' is a list of {len(node)} items, "
                    f"so '{part}' must be an index in [0, {len(node) - 1}]."
                )
            node = node[int(part)]
            continue
        if not isinstance(node, DictConfig):
            raise ConfigOverrideError(
                f"Config key '{key}': '{path}' is a value ({type(node).__name__}), not a "
                "config node, so it has no sub-keys."
            )
        if part in node:
            if OmegaConf.is_missing(node, part):
                node = None
            elif OmegaConf.is_interpolation(node, part):
                node = OmegaConf.select(
                    node, part, default=_UNKNOWN, throw_on_resolution_failure=False
                )
            else:
                node = node[part]
            continue
        known = [k for k in node.keys() if k != "_target_"]
        if "_target_" in node:
            params = _callable_params(node["_target_"])
            if params is None:
                return _UNKNOWN
            if part in params and depth == len(parts) - 1:
                return params[part]
            target = node["_target_"]
            name = target if isinstance(target, str) else _convert_target_to_string(target)
            known = sorted(set(known) | set(params))
            where = f"'{path}' ({name})"
        else:
            where = f"'{path}'"
        close = difflib.get_close_matches(part, known, n=3, cutoff=0.5)
        raise ConfigOverrideError(
            f"Unknown config key '{key}': {where} has no key '{part}'."
            + (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else "")
            + f" Keys there: {', '.join(known) if known else '(none)'}."
        )
    return node


def _kind(value: Any) -> Optional[str]:
    """'a boolean', 'an integer' or 'a number' for values whose type an override must keep."""
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return None


def _check_type(key: str, current: Any, value: Any) -> None:
    """Raises if ``value`` cannot replace ``current`` (a number or boolean) at ``key``."""
    expected = _kind(current)
    if expected is None or (isinstance(value, str) and value.startswith("${")):
        return  # free-form, unknown, or an interpolation resolved later
    fits = (
        isinstance(value, bool)
        if isinstance(current, bool)
        else (
            isinstance(value, int) and not isinstance(value, bool)
            if isinstance(current, int)
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
    )
    if not fits:
        raise ConfigOverrideError(
            f"Config key '{key}' expects {expected} (now {current!r}), got {value!r} "
            f"({type(value).__name__})."
        )


def apply_overrides_checked(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Applies ``key=value`` overrides (Hydra syntax) in place after checking every key.

    Args:
        cfg: a LazyConfig.
        overrides: strings such as ``"train.max_iter=100"``.

    Returns:
        ``cfg``.

    Raises:
        ConfigOverrideError: for malformed overrides, unknown keys (naming the nearest existing
            ones) and values of the wrong type (naming the expected one).
    """
    overrides = list(overrides)
    parser = OverridesParser.create()
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigOverrideError(
                f"Override '{item}' is not of the form key=value (e.g. train.max_iter=1000)."
            )
        key = item.split("=", 1)[0].lstrip("+~")
        current = _check_key(cfg, key)
        try:
            value = parser.parse_overrides([item])[0].value()
        except Exception as e:  # hydra's parser errors name the offending text
            raise ConfigOverrideError(f"Cannot apply override '{item}': {e}") from e
        _check_type(key, current, value)
    try:
        return LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # hydra's parser errors name the offending text
        raise ConfigOverrideError(f"Cannot apply overrides {overrides}: {e}") from e
