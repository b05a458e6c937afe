"""Layer-wise learning-rate decay for MViT backbones inside a detector."""

import re
from typing import Sequence

__all__ = ["MViTLayerDecay"]


class MViTLayerDecay:
    """Maps a parameter name to its learning-rate factor, ``decay_rate ** (depth + 1 - layer)``.

    Layers are counted per block and stage-aware: the patch embedding (and ``pos_embed``) is
    layer 0, block ``i`` is layer ``i + 1``, the output norm ``scale{n}_norm`` of a stage belongs
    to that stage's last block, and everything outside the backbone (FPN, RPN, RoI heads) is
    layer ``depth + 1`` with factor 1. ``decay_rate=1`` switches the decay off.

    Use it as ``lr_factor_func`` of ``detectron2.solver.get_default_optimizer_params`` (the
    ``optimizer.params`` node of the configs).

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
        if not 0.0 < decay_rate <= 1.0:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}.")
        if len(last_block_indexes) != 4 or max(last_block_indexes) >= depth:
            raise ValueError(
                f"last_block_indexes must be 4 block indexes below depth={depth}, "
                f"got {tuple(last_block_indexes)}."
            )
        self.depth = depth
        self.last_block_indexes = tuple(int(i) for i in last_block_indexes)
        self.decay_rate = decay_rate
        self.prefix = prefix
        self._block = re.compile(r"blocks\.(\d+)\.")
        self._stage_norm = re.compile(r"scale([2-5])_norm\.")

    def layer_id(self, name: str) -> int:
        """The layer of a parameter, 0 (patch embedding) to depth + 1 (outside the backbone).

        Args:
            name: full parameter name in the model, e.g. "backbone.bottom_up.blocks.3.attn.qkv.weight".
        """
        if not name.startswith(self.prefix):
            return self.depth + 1
        local = name[len(self.prefix) :]
        if local.startswith(("patch_embed.", "pos_embed")):
            return 0
        match = self._block.match(local)
        if match:
            return int(match.group(1)) + 1
        match = self._stage_norm.match(local)
        if match:
            return self.last_block_indexes[int(match.group(1)) - 2] + 1
        return self.depth + 1

    def __call__(self, name: str) -> float:
        return self.decay_rate ** (self.depth + 1 - self.layer_id(name))
