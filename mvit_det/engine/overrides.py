"""Command-line ``key=value`` overrides of LazyConfigs that reject unknown keys with a hint.

Detectron2's ``LazyConfig.apply_overrides`` creates any key it is given, so a typo such as
``train.max_iterr=10`` is silently ignored. Here a key must exist in the config, or be an argument
of the callable of an ``L(...)`` node (``model.backbone.bottom_up.attn_impl=sdpa``), or lie under
the free-form ``datasets`` node.
"""

import difflib
import inspect
from typing import Any, Iterable, List, Optional

from detectron2.config import LazyConfig
from detectron2.utils.registry import _convert_target_to_string, locate
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["apply_overrides_checked", "ConfigOverrideError"]

# Top-level nodes whose children are free-form names (see mvit_det.data.register_datasets...).
_OPEN_NODES = ("datasets",)


class ConfigOverrideError(ValueError):
    """A ``key=value`` override that does not fit the config."""


def _callable_params(target: Any) -> Optional[List[str]]:
    """Argument names of an L(...) node's target; None if it takes **kwargs or is unknown."""
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
    return [p.name for p in params if p.kind != inspect.Parameter.VAR_POSITIONAL]


def _check_key(cfg: DictConfig, key: str) -> None:
    parts = key.split(".")
    if parts[0] in _OPEN_NODES:
        return
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
            node = node[part] if not OmegaConf.is_missing(node, part) else None
            continue
        known = [k for k in node.keys() if k != "_target_"]
        if "_target_" in node:
            params = _callable_params(node["_target_"])
            if params is None or (part in params and depth == len(parts) - 1):
                return
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


def apply_overrides_checked(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Applies ``key=value`` overrides (Hydra syntax) in place after checking every key.

    Args:
        cfg: a LazyConfig.
        overrides: strings such as ``"train.max_iter=100"``.

    Returns:
        ``cfg``.

    Raises:
        ConfigOverrideError: for malformed overrides and unknown keys, naming the key and the
            nearest existing ones.
    """
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigOverrideError(
                f"Override '{item}' is not of the form key=value (e.g. train.max_iter=1000)."
            )
        key = item.split("=", 1)[0].lstrip("+~")
        _check_key(cfg, key)
    try:
        return LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # hydra's parser errors name the offending text
        raise ConfigOverrideError(f"Cannot apply overrides {overrides}: {e}") from e
