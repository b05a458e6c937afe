"""Named sizes: MViTv2 T, S, B, L, H (docs/architecture.md) and ViL T, S, M, B, MW, BW (docs/vil.md)."""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["MVIT_PRESETS", "VIL_PRESETS", "mvit_preset", "vil_preset"]

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


# ViL sizes (see docs/vil.md): channels, block pairs, heads per stage; the drop path of the 3x
# detection recipes (Mask R-CNN and RetinaNet alike). "M" and "B" are the deep Medium and Base
# models used for detection; "MW" and "BW" the wide ones, which have no detection recipe (they
# take the drop path of M and B). Every preset sets the same keys.
VIL_PRESETS: Dict[str, Dict[str, Any]] = {
    "T": dict(embed_dims=(48, 96, 192, 384), depths=(1, 1, 9, 1), num_heads=(1, 3, 3, 6),
              drop_path_rate=0.1, use_act_checkpoint=False),
    "S": dict(embed_dims=(96, 192, 384, 768), depths=(1, 2, 8, 1), num_heads=(3, 3, 6, 12),
              drop_path_rate=0.2, use_act_checkpoint=False),
    "M": dict(embed_dims=(96, 192, 384, 768), depths=(1, 4, 16, 1), num_heads=(3, 3, 6, 12),
              drop_path_rate=0.3, use_act_checkpoint=False),
    "B": dict(embed_dims=(96, 192, 384, 768), depths=(1, 8, 24, 1), num_heads=(3, 3, 6, 12),
              drop_path_rate=0.3, use_act_checkpoint=False),
    "MW": dict(embed_dims=(192, 384, 512, 768), depths=(1, 2, 8, 1), num_heads=(3, 6, 8, 12),
               drop_path_rate=0.3, use_act_checkpoint=False),
    "BW": dict(embed_dims=(192, 384, 768, 1024), depths=(1, 2, 8, 1), num_heads=(3, 6, 12, 16),
               drop_path_rate=0.3, use_act_checkpoint=False),
}  # fmt: skip


def vil_preset(size: str, **overrides: Any) -> Dict[str, Any]:
    """
    Returns the ViL keyword arguments of a named size, updated with ``overrides``.

    Args:
        size: "T", "S", "M", "B", "MW" or "BW" (case-insensitive; a "vil_" / "ViL-" prefix is
            accepted, e.g. "vil_s").
        overrides: ViL keyword arguments that replace or extend the preset.

    Returns:
        a new dict of ViL keyword arguments.
    """
    key = str(size).upper()
    for prefix in ("VIL_", "VIL-"):
        key = key[len(prefix) :] if key.startswith(prefix) else key
    if key not in VIL_PRESETS:
        raise ValueError(f"unknown ViL size {size!r}; choose one of {sorted(VIL_PRESETS)}")
    return {**VIL_PRESETS[key], **overrides}
