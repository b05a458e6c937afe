"""The layers of MViT for layer-wise learning-rate decay."""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["MViTLayers"]


class MViTLayers:
    """
    Which layer an MViT parameter belongs to, stage-aware: the patch embedding (and
    ``pos_embed``) is layer 0, block ``i`` is layer ``i + 1``, and the output norm
    ``scale{n}_norm`` of a stage belongs to that stage's last block.

    Args:
        depth: number of MViT blocks.
        last_block_indexes: index of the last block of each stage (stages 2-5).
    """

    def __init__(self, depth: int, last_block_indexes: Sequence[int]) -> None:
        if len(last_block_indexes) != 4 or max(last_block_indexes) >= depth:
            raise ValueError(
                f"last_block_indexes must be 4 block indexes below depth={depth}, "
                f"got {tuple(last_block_indexes)}."
            )
        self.num_layers = depth
        self.last_block_indexes = tuple(int(i) for i in last_block_indexes)
        self._block = re.compile(r"blocks\.(\d+)\.")
        self._stage_norm = re.compile(r"scale([2-5])_norm\.")

    def layer_id(self, name: str) -> int:
        """
        The layer of a parameter, 0 to ``num_layers`` (``num_layers + 1`` for a name that is
        none of the backbone's layers).

        Args:
            name: parameter name inside the MViT, e.g. "blocks.3.attn.qkv.weight".
        """
        if name.startswith(("patch_embed.", "pos_embed")):
            return 0
        match = self._block.match(name)
        if match:
            return int(match.group(1)) + 1
        match = self._stage_norm.match(name)
        if match:
            return self.last_block_indexes[int(match.group(1)) - 2] + 1
        return self.num_layers + 1
