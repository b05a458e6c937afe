"""Named sizes of MViTv2: T, S, B, L, H (docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["MVIT_PRESETS", "mvit_preset"]

# embed dim C, depth, heads of stage 2, last block of each stage, drop path of the 3x recipes,
# activation checkpointing (H only). Every preset sets the same keys, so applying one preset over
# another (``cfg.update(mvit_preset("B"))``) leaves nothing of the first behind.
MVIT_PRESETS: Dict[str, Dict[str, Any]] = {
    "T": dict(embed_dim=96, depth=10, num_heads=1, last_block_indexes=(0, 2, 7, 9),
              drop_path_rate=0.2, use_act_checkpoint=False),
    "S": dict(embed_dim=96, depth=16, num_heads=1, last_block_indexes=(0, 2, 13, 15),
              drop_path_rate=0.2, use_act_checkpoint=False),
    "B": dict(embed_dim=96, depth=24, num_heads=1, last_block_indexes=(1, 4, 20, 23),
              drop_path_rate=0.4, use_act_checkpoint=False),
    "L": dict(embed_dim=144, depth=48, num_heads=2, last_block_indexes=(1, 7, 43, 47),
              drop_path_rate=0.5, use_act_checkpoint=False),
    "H": dict(embed_dim=192, depth=80, num_heads=3, last_block_indexes=(3, 11, 71, 79),
              drop_path_rate=0.6, use_act_checkpoint=True),
}  # fmt: skip


def mvit_preset(size: str, **overrides: Any) -> Dict[str, Any]:
    """
    Returns the MViT keyword arguments of a named size, updated with ``overrides``.

    Args:
        size: "T", "S", "B", "L" or "H" (case-insensitive).
        overrides: MViT keyword arguments that replace or extend the preset.

    Returns:
        a new dict of MViT keyword arguments.
    """
    key = str(size).upper()
    if key not in MVIT_PRESETS:
        raise ValueError(f"unknown MViTv2 size {size!r}; choose one of {sorted(MVIT_PRESETS)}")
    return {**MVIT_PRESETS[key], **overrides}
