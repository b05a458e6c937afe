"""Finding the backbones of registered families in a LazyConfig, wherever the config puts them
(``model.backbone.bottom_up`` under an FPN, ``model.backbone.net`` under a simple feature
pyramid, ...)."""

from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Tuple

from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..modeling.backbones.registry import BackboneFamily, family_of

__all__ = ["BackboneNode", "backbone_nodes", "lazy_nodes"]


class BackboneNode(NamedTuple):
    """
    A node of a LazyConfig that builds a backbone of a registered family.

    Attributes:
        key: where it is, e.g. "model.backbone.bottom_up".
        node: the node.
        target: the class it builds (the family's backbone or a subclass).
        family: the family.
    """

    key: str
    node: DictConfig
    target: type
    family: BackboneFamily


def lazy_nodes(node: Any, key: str) -> Iterator[Tuple[str, DictConfig]]:
    """
    The ``L(...)`` nodes (those with a ``_target_``) under ``node``, with their keys.

    Args:
        node: a config node.
        key: its key, e.g. "model".
    """
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for name in node.keys():
            if not OmegaConf.is_interpolation(node, name):
                yield from lazy_nodes(node.get(name), f"{key}.{name}")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from lazy_nodes(item, f"{key}.{i}")


def backbone_nodes(cfg: Any) -> List[BackboneNode]:
    """
    The nodes of ``cfg.model`` that build a backbone of a registered family, in config order.
    Targets that cannot be located are left out (instantiating reports them).

    Args:
        cfg: a LazyConfig.
    """
    found = []
    for key, node in lazy_nodes(cfg.get("model"), "model"):
        target = node._target_
        try:
            target = locate(target) if isinstance(target, str) else target
        except Exception:
            continue
        family = family_of(target) if isinstance(target, type) else None
        if family is not None:
            found.append(BackboneNode(key, node, target, family))
    return found
