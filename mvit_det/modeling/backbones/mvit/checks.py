"""The argument checks of MViT and of its attention module, in one place."""

from typing import Any, Optional, Sequence, Set, Tuple

from timm.layers import to_2tuple

from .cores import MVIT_CORES

__all__ = ["ATTENTION_MODES", "NUM_STAGES", "check_attention_args", "check_mvit_args"]

ATTENTION_MODES = ("hybrid", "global", "window")
NUM_STAGES = 4


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")


def _check_pair(name: str, value: Any, low: int) -> Tuple[int, int]:
    pair = to_2tuple(value)
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < low for v in pair
    ):
        raise ValueError(f"{name}={value!r} must be an int or a pair of ints >= {low}")
    return tuple(pair)  # type: ignore[return-value]


def check_mvit_args(
    *,
    img_size: int,
    patch_kernel: Any,
    patch_stride: Any,
    patch_padding: Any,
    in_chans: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    qkv_pool_kernel: Any,
    adaptive_kv_stride: int,
    adaptive_window_size: int,
    mlp_ratio: float,
    drop_path_rate: float,
    out_features: Sequence[str],
    attention_mode: str,
    global_block_indexes: Optional[Sequence[int]],
    attn_impl: str,
) -> Set[int]:
    """
    Validates the arguments of :class:`~.model.MViT` before anything is built (also what the
    training tool runs on a config before it starts). The block layout derived from them is
    checked where it is computed (:func:`~.model.mvit_block_layout`: windows that the strides
    do not divide).

    Returns:
        the set of blocks with global attention.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    for name, value, low in (
        ("img_size", img_size, 1),
        ("in_chans", in_chans, 1),
        ("embed_dim", embed_dim, 1),
        ("num_heads", num_heads, 1),
        ("adaptive_kv_stride", adaptive_kv_stride, 1),
        ("adaptive_window_size", adaptive_window_size, 0),
    ):
        _check_int(name, value, low)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < NUM_STAGES:
        raise ValueError(f"depth={depth!r} must be an int >= {NUM_STAGES} (one block a stage)")
    _check_pair("patch_kernel", patch_kernel, 1)
    _check_pair("patch_stride", patch_stride, 1)
    _check_pair("patch_padding", patch_padding, 0)
    if any(k % 2 == 0 for k in _check_pair("qkv_pool_kernel", qkv_pool_kernel, 1)):
        raise ValueError(
            f"qkv_pool_kernel={qkv_pool_kernel!r} must be odd (padding k // 2 keeps the map "
            "size at stride 1); the published value is (3, 3)"
        )
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} must be > 0")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} must be in [0, 1)")
    indexes = tuple(last_block_indexes)
    if len(indexes) != NUM_STAGES or not all(isinstance(i, int) for i in indexes):
        raise ValueError(
            f"last_block_indexes={last_block_indexes!r} must be {NUM_STAGES} ints, the index "
            "of the last block of each stage (e.g. (1, 4, 20, 23) for depth 24)"
        )
    if indexes[0] < 0 or any(b <= a for a, b in zip(indexes, indexes[1:])):
        raise ValueError(
            f"last_block_indexes={indexes} must be non-negative and strictly increasing"
        )
    if indexes[-1] != depth - 1:
        raise ValueError(
            f"last_block_indexes={indexes} must end at the last block, depth - 1 = "
            f"{depth - 1} (got {indexes[-1]}, {'beyond' if indexes[-1] >= depth else 'before'}"
            " the last block)"
        )
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(
            f"attention_mode={attention_mode!r} is unknown; use one of {ATTENTION_MODES}"
        )
    if global_block_indexes is not None:
        if attention_mode != "hybrid":
            raise ValueError(
                f"global_block_indexes={global_block_indexes!r} only applies to "
                f"attention_mode='hybrid', not {attention_mode!r}"
            )
        bad = [i for i in global_block_indexes if not isinstance(i, int) or not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"global_block_indexes={tuple(global_block_indexes)} has {bad}: block "
                f"indexes must be ints in [0, {depth - 1}]"
            )
    valid = [f"scale{s}" for s in range(2, 2 + NUM_STAGES)]
    if not out_features or any(f not in valid for f in out_features):
        raise ValueError(f"out_features={tuple(out_features)!r} must be a subset of {valid}")
    MVIT_CORES.check(attn_impl)
    if attention_mode == "global":
        global_blocks = set(range(depth))
    elif attention_mode == "window":
        global_blocks = set()
    elif global_block_indexes is None:
        global_blocks = set(indexes[1:])
    else:
        global_blocks = set(global_block_indexes)
    if adaptive_window_size == 0 and len(global_blocks) < depth:
        raise ValueError(
            "adaptive_window_size=0 disables windows; use attention_mode='global' for "
            "pure pooling attention, or give a window size > 0"
        )
    return global_blocks


def check_attention_args(
    dim_out: int, num_heads: int, window_size: int, stride_q: int, stride_kv: int, attn_impl: str
) -> None:
    """
    Validates the arguments of :class:`~.attention.MultiScaleAttention` that it relies on (an
    MViT passes values that :func:`check_mvit_args` and the block layout have checked).

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    MVIT_CORES.check(attn_impl)
    if dim_out % num_heads:
        raise ValueError(f"dim_out={dim_out} is not divisible by num_heads={num_heads}")
    if window_size and (window_size % stride_q or window_size % stride_kv):
        raise ValueError(
            f"window_size={window_size} is not divisible by stride_q={stride_q} and "
            f"stride_kv={stride_kv}; the q and kv windows must tile the same window grid"
        )
