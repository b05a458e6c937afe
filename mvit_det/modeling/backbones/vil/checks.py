"""The argument checks of ViL, in one place."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from .cores import VIL_CORES

__all__ = [
    "NUM_STAGES",
    "WINDOW_MODES",
    "check_attention_args",
    "check_vil_args",
    "check_window_mode",
]

NUM_STAGES = 4
WINDOW_MODES = ("chunk", "exact")


def check_window_mode(window_mode: str) -> None:
    """
    Raises:
        ValueError: ``window_mode`` is not one of :data:`WINDOW_MODES`.
    """
    if window_mode not in WINDOW_MODES:
        raise ValueError(f"window_mode={window_mode!r} is unknown; use one of {WINDOW_MODES}")


def _per_stage(name: str, value: Any, low: int) -> Tuple[int, ...]:
    """Checks a per-stage int argument (an int for all stages or one per stage)."""
    values = (value,) * NUM_STAGES if isinstance(value, int) else tuple(value)
    if len(values) != NUM_STAGES or any(
        isinstance(v, bool) or not isinstance(v, int) or v < low for v in values
    ):
        raise ValueError(
            f"{name}={value!r} must be {NUM_STAGES} ints >= {low} (one per stage)"
            + (" or one int" if name == "window" else "")
        )
    return values


def check_vil_args(
    *,
    in_chans: int,
    embed_dims: Sequence[int],
    depths: Sequence[int],
    num_heads: Sequence[int],
    patch_sizes: Sequence[int],
    num_global_tokens: Sequence[int],
    window: int | Sequence[int],
    window_mode: str,
    mlp_ratio: float,
    drop_path_rate: float,
    out_features: Sequence[str],
    attn_impl: str,
) -> Tuple[int, ...]:
    """
    Validates the arguments of :class:`~.model.ViL` before anything is built (also what the
    training tool runs on a config before it starts); its modules rely on them.

    Returns:
        the window of each stage.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r} must be an int >= 1")
    dims = _per_stage("embed_dims", tuple(embed_dims), 1)
    _per_stage("depths", tuple(depths), 1)
    heads = _per_stage("num_heads", tuple(num_heads), 1)
    _per_stage("patch_sizes", tuple(patch_sizes), 1)
    _per_stage("num_global_tokens", tuple(num_global_tokens), 0)
    windows = _per_stage("window", window, 1)
    bad = [(d, h) for d, h in zip(dims, heads) if d % h]
    if bad:
        raise ValueError(
            f"embed_dims={tuple(embed_dims)} must be divisible by num_heads={tuple(num_heads)} "
            f"stage by stage; (dim, heads) {bad} are not"
        )
    check_window_mode(window_mode)
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} must be > 0")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} must be in [0, 1)")
    valid = [f"scale{s}" for s in range(2, 2 + NUM_STAGES)]
    if not out_features or any(f not in valid for f in out_features):
        raise ValueError(f"out_features={tuple(out_features)!r} must be a subset of {valid}")
    VIL_CORES.check(attn_impl)
    return windows


def check_attention_args(dim: int, num_heads: int, window_mode: str, attn_impl: str) -> None:
    """
    Validates the arguments of :class:`~.attention.LongformerAttention` that it relies on (a ViL
    passes values that :func:`check_vil_args` has checked).

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if dim % num_heads:
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
    check_window_mode(window_mode)
    VIL_CORES.check(attn_impl)
