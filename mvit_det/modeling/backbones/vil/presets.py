"""Named sizes of ViL: T, S, M, B, MW, BW (docs/vil.md)."""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["VIL_PRESETS", "vil_preset"]

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
