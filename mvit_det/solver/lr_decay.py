"""Layer-wise learning-rate decay for the backbone of a detector, by the layer rule of its
family."""

from typing import Any, Sequence

from ..modeling.backbones import get_family

__all__ = ["LayerDecay", "MViTLayerDecay"]


class LayerDecay:
    """Maps a parameter name to its learning-rate factor, ``decay_rate ** (L + 1 - layer)``.

    ``L`` is the number of layers of the backbone and ``layer`` the layer of the parameter by the
    rule of the backbone's family (``layer_rule`` of its
    :class:`~mvit_det.modeling.backbones.registry.BackboneFamily`, e.g.
    :class:`~mvit_det.modeling.backbones.mvit.layer_decay.MViTLayers`); everything outside the
    backbone (FPN, RPN, RoI heads) is layer ``L + 1`` with factor 1. ``decay_rate=1`` switches
    the decay off.

    Use it as ``lr_factor_func`` of ``detectron2.solver.get_default_optimizer_params`` (the
    ``optimizer.params`` node of the configs).

    Args:
        family: name of the backbone family, e.g. "mvit".
        decay_rate: factor between consecutive layers, in (0, 1].
        prefix: name prefix of the backbone's parameters in the model.
        arguments: the arguments of the family's layer rule (for MViT: ``depth`` and
            ``last_block_indexes``).
    """

    def __init__(
        self,
        family: str,
        decay_rate: float = 1.0,
        prefix: str = "backbone.bottom_up.",
        **arguments: Any,
    ) -> None:
        if not 0.0 < decay_rate <= 1.0:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}.")
        rule = get_family(family).layer_rule
        if rule is None:
            raise ValueError(f"the backbone family {family!r} has no layer-wise decay rule")
        self.layers = rule(**arguments)
        self.decay_rate = decay_rate
        self.prefix = prefix

    def layer_id(self, name: str) -> int:
        """The layer of a parameter, 0 to L + 1 (outside the backbone).

        Args:
            name: full parameter name in the model, e.g. "backbone.bottom_up.blocks.3.attn.qkv.weight".
        """
        if not name.startswith(self.prefix):
            return self.layers.num_layers + 1
        return self.layers.layer_id(name[len(self.prefix) :])

    def __call__(self, name: str) -> float:
        return self.decay_rate ** (self.layers.num_layers + 1 - self.layer_id(name))


class MViTLayerDecay(LayerDecay):
    """:class:`LayerDecay` of an MViT, with the arguments the configs set.

    Args:
        depth: number of MViT blocks.
        last_block_indexes: index of the last block of each stage (stages 2-5).
        decay_rate: factor between consecutive layers, in (0, 1].
        prefix: name prefix of the MViT parameters in the model.
    """

    def __init__(
        self,
        depth: int,
        last_block_indexes: Sequence[int],
        decay_rate: float = 1.0,
        prefix: str = "backbone.bottom_up.",
    ) -> None:
        super().__init__(
            "mvit", decay_rate, prefix, depth=depth, last_block_indexes=last_block_indexes
        )
