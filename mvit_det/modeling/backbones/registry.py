"""The registry of backbone families.

A family (MViT, ViL, ...) is one package under ``mvit_det/modeling/backbones/`` that registers one
:class:`BackboneFamily` record. Everything outside the package that must know about a backbone
(the yacs keys and builders, the checkpointer, ``convert_checkpoint``, ``benchmark``, ``export``,
the layer-wise learning-rate decay, the training tool's argument checks) looks the family up
here instead of naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch.nn as nn

__all__ = [
    "AttentionCores",
    "BackboneFamily",
    "PretrainedWeights",
    "WeightOption",
    "backbone_classes",
    "families",
    "family_of",
    "find_backbone",
    "get_family",
    "on_register",
    "register_family",
    "unregister_family",
]


@dataclass(frozen=True)
class AttentionCores:
    """
    The attention cores of a family: one function per name, all with the family's one signature,
    and the rule that picks one for ``"auto"``.

    Attributes:
        cores: name -> core function.
        auto: the rule for ``"auto"``: called with the family's context arguments (see the
            family's attention module), returns a name of ``cores``.
        auto_cases: where the rule depends on the situation: ``auto_cases(on_cpu)`` maps each
            situation it tells apart (e.g. "training", "inference") to its choice on the CPU
            (True) or CUDA (False), for reports such as the benchmark's; None otherwise.
    """

    cores: Mapping[str, Callable[..., Any]]
    auto: Callable[..., str]
    auto_cases: Optional[Callable[[bool], Dict[str, str]]] = None

    def names(self) -> Tuple[str, ...]:
        """The names an ``attn_impl`` argument accepts: ``"auto"``, then the cores."""
        return ("auto",) + tuple(self.cores)

    def check(self, name: str) -> None:
        """
        Raises:
            ValueError: ``name`` is neither ``"auto"`` nor a core.
        """
        if name not in self.names():
            raise ValueError(f"attn_impl={name!r} is unknown; use one of {self.names()}")

    def resolve(self, name: str, *context: Any) -> str:
        """The core that ``name`` stands for: the auto rule's choice for ``"auto"``, else
        ``name``."""
        return self.auto(*context) if name == "auto" else name

    def pick(self, name: str, *context: Any) -> Callable[..., Any]:
        """The core function that ``name`` stands for (see :meth:`resolve`)."""
        return self.cores[self.resolve(name, *context)]


@dataclass(frozen=True)
class WeightOption:
    """
    An option of a family's weight mapping that the conversion tool offers on its command line.

    Attributes:
        flag: the command-line flag, e.g. ``"--bias-table"``.
        name: the keyword argument of ``adapt_weights`` it sets, e.g. ``"bias_table"``.
        default: its value when not given.
        choices: the values allowed.
        help: the help text.
    """

    flag: str
    name: str
    default: Any
    choices: Sequence[Any]
    help: str


@dataclass(frozen=True)
class PretrainedWeights:
    """
    Published weights of one backbone size, which ``mvit_det.model_zoo.get(..., pretrained=True)``
    (and the torch.hub entry points) load.

    Attributes:
        url: where the file is published (``detectron2://...``, ``https://...``).
        description: what the weights are, e.g. ``"ImageNet-1K classification"``.
        sha256: the file's SHA-256 (64 hex digits), checked after the download; "" where none is
            known (the file is then checked as a checkpoint only, and loading it logs that it is
            not pinned).
    """

    url: str
    description: str
    sha256: str = ""

    def pinned_url(self) -> str:
        """The URL with a ``#sha256=<hex>`` suffix when a digest is known (the suffix the
        checkpoint readers check), else the URL."""
        return f"{self.url}#sha256={self.sha256}" if self.sha256 else self.url


@dataclass(frozen=True)
class BackboneFamily:
    """
    What the rest of mvit_det knows about a family of backbones.

    Attributes:
        name: short lower-case name, e.g. ``"mvit"`` (``export --what mvit``, ``LayerDecay``).
        title: the name in messages, e.g. ``"MViT"``.
        backbone: the Detectron2 ``Backbone`` class. Its keyword arguments become the yacs keys;
            it has a ``num_layers`` property (named in load reports).
        presets: size name -> keyword arguments of the backbone.
        preset: ``preset(size, **overrides)`` -> keyword arguments; raises ValueError for an
            unknown size.
        size_names: the sizes as the tools accept them (``convert_checkpoint --model``),
            compared case-insensitively, each accepted by ``preset``.
        check_args: validates the backbone's keyword arguments without building it (called with
            those of its parameters that it takes); raises ValueError.
        attention: the attention cores.
        adapt_weights: ``adapt_weights(state, backbone_state, prefix, source, target, **options)``
            -> (weights for the model, :class:`~mvit_det.checkpoint.mapping.LoadReport`): maps
            checkpoint weights of the layouts the family reads onto a model with this backbone
            at ``prefix``; raises ``ArchitectureMismatchError``.
        yacs_node: the key under ``cfg.MODEL`` of its yacs arguments, e.g. ``"MVIT"``.
        yacs_default_size: the preset that the yacs defaults hold.
        yacs_builders: names of the Detectron2 backbone builders (``cfg.MODEL.BACKBONE.NAME``) to
            the neck each puts on the backbone: ``"fpn"`` (P2-P6) or ``"retinanet_fpn"``
            (P3-P7); see :data:`mvit_det.modeling.fpn.NECKS`.
        weight_options: options of ``adapt_weights`` offered by the conversion tool.
        layer_rule: ``layer_rule(**arguments)`` -> an object with ``num_layers`` and
            ``layer_id(name)`` (name inside the backbone) for layer-wise learning-rate decay, or
            None where the family has no such rule.
        scriptable: whether the backbone compiles with ``torch.jit.script``.
        attention_bytes: ``attention_bytes(backbone, core, image_hw, batch, element_size)`` ->
            bytes of the largest tensor that ``core`` builds at that input (0 when it builds
            none of the input's scale), for cores that would not fit into memory; or None.
        model_prefix: the backbones' names in ``mvit_det.model_zoo`` and torch.hub are
            ``<model_prefix>_<size>`` (lower case) for every preset; "" for the family's name.
        pretrained: preset name -> the published weights of that size (sizes without published
            weights are left out).
    """

    name: str
    title: str
    backbone: Type[nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    preset: Callable[..., Dict[str, Any]]
    size_names: Tuple[str, ...]
    check_args: Callable[..., Any]
    attention: AttentionCores
    adapt_weights: Callable[..., Tuple[Dict[str, Any], Any]]
    yacs_node: str
    yacs_default_size: str
    yacs_builders: Mapping[str, str]
    weight_options: Tuple[WeightOption, ...] = ()
    layer_rule: Optional[Callable[..., Any]] = None
    scriptable: bool = False
    attention_bytes: Optional[Callable[..., int]] = None
    model_prefix: str = ""
    pretrained: Mapping[str, PretrainedWeights] = field(default_factory=dict)

    def model_names(self) -> Dict[str, str]:
        """The backbones' model names (``mvitv2_t``, ``vil_s``, ...) -> preset names, one per
        preset."""
        prefix = self.model_prefix or self.name
        return {f"{prefix}_{size.lower()}": size for size in self.presets}

    def accepts_size(self, size: str) -> bool:
        """Whether ``size`` is one of :attr:`size_names` (case-insensitive)."""
        return size.lower() in {s.lower() for s in self.size_names}


_FAMILIES: Dict[str, BackboneFamily] = {}
_LISTENERS: List[Callable[[BackboneFamily], None]] = []


def register_family(family: BackboneFamily) -> BackboneFamily:
    """
    Registers a family and tells the listeners of :func:`on_register` (which add its yacs keys
    and builders to Detectron2).

    Args:
        family: the record.

    Returns:
        the record.

    Raises:
        ValueError: another family has the name, backbone class, yacs node or a builder name.
    """
    for other in _FAMILIES.values():
        clashes = [
            what
            for what, mine, theirs in (
                ("name", family.name, other.name),
                ("backbone", family.backbone, other.backbone),
                ("yacs_node", family.yacs_node, other.yacs_node),
            )
            if mine == theirs
        ] + sorted(set(family.yacs_builders) & set(other.yacs_builders))
        if clashes:
            raise ValueError(
                f"backbone family {family.name!r} clashes with the registered family "
                f"{other.name!r}: same {', '.join(clashes)}"
            )
    _FAMILIES[family.name] = family
    for listener in list(_LISTENERS):
        listener(family)
    return family


def unregister_family(name: str) -> None:
    """Removes a family from the registry (what its listeners installed stays)."""
    _FAMILIES.pop(name, None)


def on_register(listener: Callable[[BackboneFamily], None]) -> None:
    """
    Calls ``listener(family)`` for every registered family, now and whenever one is registered.

    Args:
        listener: a function of one :class:`BackboneFamily`.
    """
    if listener in _LISTENERS:
        return
    _LISTENERS.append(listener)
    for family in list(_FAMILIES.values()):
        listener(family)


def families() -> Tuple[BackboneFamily, ...]:
    """The registered families, in the order of registration."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> BackboneFamily:
    """
    The family registered under ``name``.

    Raises:
        KeyError: no such family, naming the registered ones.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"no backbone family {name!r}; registered: {', '.join(_FAMILIES) or 'none'}"
        ) from None


def backbone_classes() -> Tuple[type, ...]:
    """The backbone classes of all registered families."""
    return tuple(f.backbone for f in _FAMILIES.values())


def family_of(backbone: Any) -> Optional[BackboneFamily]:
    """
    The family of a backbone module or class (subclasses included), or None.

    Args:
        backbone: a module, or a class.
    """
    cls = backbone if isinstance(backbone, type) else type(backbone)
    for family in _FAMILIES.values():
        if issubclass(cls, family.backbone):
            return family
    return None


def find_backbone(
    model: nn.Module, backbone_type: Optional[Any] = None
) -> Optional[Tuple[str, nn.Module]]:
    """
    Finds the backbone of a registered family inside a model.

    Args:
        model: a detector, a neck (FPN, ...) or a backbone.
        backbone_type: only look for these classes (a class or a tuple of classes); default:
            the backbones of every registered family.

    Returns:
        (prefix of its parameter names, e.g. "backbone.bottom_up.", the module), or None when the
        model has none.

    Raises:
        ValueError: the model has more than one such backbone.
    """
    wanted = backbone_classes() if backbone_type is None else backbone_type
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, wanted)]
    if len(found) > 1:
        names = ", ".join(f"{name!r} ({type(m).__name__})" for name, m in found)
        raise ValueError(f"the model has several backbones ({names}); load each separately")
    if not found:
        return None
    name, module = found[0]
    return (f"{name}." if name else ""), module
