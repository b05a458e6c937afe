"""Mapping published ViL weights onto the ViL detection backbone.

Two layouts are read (see docs/vil.md):

- classification checkpoints (weights under ``net``, names prefixed ``module.``), whose stages 3
  and 4 use full attention: a fused ``attn.qkv`` projection and a bias table sized for the
  pretraining map. ``qkv`` is split into ``query`` and ``kv``; a table of another size is
  converted to the model's window ("centre": exact for every offset the table covers; or
  "bilinear", the published fine-tuning's resize);
- detection checkpoints (Detectron2 ``model_final.pth``, names prefixed
  ``backbone.bottom_up.``), and state dicts of this package.

Both may hold ``*_global`` projections that alias the local ones (shared global weights),
``relative_position_index`` buffers (checked against the model's window, then dropped), and the
classifier ``head`` / ``norm`` (dropped).
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from ....checkpoint.errors import ArchitectureMismatchError
from ....checkpoint.mapping import MAX_SHOWN, LoadReport, Shape, split_backbone
from ..registry import PretrainedWeights
from .geometry import relative_bias_index
from .presets import VIL_PRESETS

__all__ = [
    "BIAS_TABLE_CONVERSIONS",
    "VIL_PRETRAINED",
    "adapt_vil_state_dict",
    "convert_bias_table",
    "describe_vil",
    "full_attention_index",
    "published_window_index",
]

BIAS_TABLE_CONVERSIONS = ("centre", "bilinear")

# The published ImageNet classification weights of the sizes used for detection
# (``train.init_checkpoint`` of projects/ViL/configs/COCO/*_vil_{t,s,m,b}_*.py; checked by
# tests/test_hub.py). MW and BW have none recorded. No SHA-256 of these files is recorded here:
# they load unpinned.
_MSVIT = "https://penzhanwu2.blob.core.windows.net/imagenet/msvit/"
VIL_PRETRAINED: Dict[str, PretrainedWeights] = {
    size: PretrainedWeights(_MSVIT + path, f"published {data} classification")
    for size, path, data in (
        (
            "T",
            "visionlongformer/longtiny1191_ape0_exact0_nglo1_mode1_swith075/model_best.pth",
            "ImageNet-1K",
        ),
        ("S", "visionlongformer/small1281_relative/model_best.pth", "ImageNet-1K"),
        ("M", "IN22kpretrained/deepmedium_relative/model_best.pth", "ImageNet-21K"),
        ("B", "IN22kpretrained/deepbase_relative/model_best.pth", "ImageNet-21K"),
    )
}

_ATTN = re.compile(r"^(layer(\d)\.(\d+)\.attn)\.(.+)$")
_STEM = "layer1.0.proj.weight"
_DROPPED = (
    (re.compile(r"^head\."), "classifier head"),
    (re.compile(r"^norm\."), "final norm of the classifier"),
)
_APE = re.compile(r"(x_pos_embed|y_pos_embed|cls_pos_embed)$")


def published_window_index(window: int) -> torch.Tensor:
    """
    The ``relative_position_index`` buffer of a published ViL attention layer: (w^2, 9w^2) table
    indexes, keys ordered by neighbour chunk (row-major from the top-left one), then raster
    order inside the chunk.

    Args:
        window: the chunk side w.

    Returns:
        (w^2, 9w^2) int64.
    """
    w = window
    # our order: raster over the 3w x 3w region -> the published neighbour-major order
    region = relative_bias_index(w).view(w * w, 3, w, 3, w)
    return region.permute(0, 1, 3, 2, 4).reshape(w * w, 9 * w * w)


def full_attention_index(size: int) -> torch.Tensor:
    """
    The ``relative_position_index`` buffer of a published full-attention layer on a size x size
    map: ``(dr + size - 1) * (2 * size - 1) + (dc + size - 1)`` for (query, key) in raster order.

    Args:
        size: map side n.

    Returns:
        (n^2, n^2) int64.
    """
    r = torch.arange(size).repeat_interleave(size)
    c = torch.arange(size).repeat(size)
    dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]
    return (dr + size - 1) * (2 * size - 1) + (dc + size - 1)


def convert_bias_table(table: torch.Tensor, window: int, how: str = "centre") -> torch.Tensor:
    """
    Converts a ((2n - 1)^2, heads) relative-position bias table of full attention on an n x n map
    to the ((4w - 1)^2, heads) table of window w.

    Args:
        table: the source table; entry ``(dr + n - 1) * (2n - 1) + (dc + n - 1)`` is offset
            (dr, dc).
        window: the target window w.
        how: "centre" keeps every offset at its value (offsets beyond the source's range take
            the value of the nearest offset it has), so attention that only meets covered offsets
            is unchanged; "bilinear" resizes the offset grid bilinearly, as the published
            fine-tuning did (this changes the function).

    Returns:
        ((4w - 1)^2, heads) table in the dtype of ``table``.
    """
    if how not in BIAS_TABLE_CONVERSIONS:
        raise ValueError(f"bias table conversion {how!r} is unknown; use {BIAS_TABLE_CONVERSIONS}")
    side = int(round(table.shape[0] ** 0.5))
    if side * side != table.shape[0] or side % 2 == 0:
        raise ArchitectureMismatchError(
            f"relative-position table with {table.shape[0]} rows is not a (2n - 1)^2 offset grid"
        )
    target = 4 * window - 1
    grid = table.reshape(side, side, -1)  # (dr, dc, heads)
    if how == "bilinear":
        # (side, side, h) -> (1, h, side, side) -> (1, h, target, target)
        resized = F.interpolate(
            grid.permute(2, 0, 1)[None].float(), size=(target, target), mode="bilinear"
        )
        return resized[0].permute(1, 2, 0).reshape(target * target, -1).to(table.dtype)
    reach = side // 2  # the source covers |offset| <= reach
    offsets = torch.arange(target) - (target // 2)
    source = offsets.clamp(-reach, reach) + reach
    return grid[source][:, source].reshape(target * target, -1).contiguous()


def _window_of(table_rows: int) -> Optional[int]:
    """The window w of a ((4w - 1)^2, heads) table, or None if the rows are not of that form."""
    side = int(round(table_rows**0.5))
    if side * side != table_rows or (side + 1) % 4:
        return None
    return (side + 1) // 4


def describe_vil(shapes: Mapping[str, Shape]) -> str:
    """
    Names the ViL size of flat backbone weights, for error messages.

    Args:
        shapes: flat backbone names (``layer1.0.proj.weight``, ...) to shapes.

    Returns:
        e.g. "ViL-S (embed_dims=(96, 192, 384, 768), depths=(1, 2, 8, 1), num_heads=(3, 3, 6, 12),
        num_global_tokens=(1, 1, 1, 0))".
    """
    if _STEM not in shapes:
        return "no ViL backbone (no layer1.0.proj.weight)"
    dims, depths, heads, globals_, full = [], [], [], [], []
    for i in range(1, 5):
        stem = shapes.get(f"layer{i}.0.proj.weight")
        if stem is None:
            return f"an incomplete ViL (no layer{i}.0.proj.weight)"
        dims.append(stem[0])
        blocks = sorted(
            {
                int(m.group(3))
                for k in shapes
                for m in [_ATTN.match(k)]
                if m and m.group(2) == str(i)
            }
        )
        depths.append(len(blocks))
        table = shapes.get(f"layer{i}.1.attn.local_relative_position_bias_table")
        heads.append(table[1] if table else "?")
        globals_.append(shapes.get(f"layer{i}.0.cls_token", (1, 0))[1])
        if f"layer{i}.1.attn.qkv.weight" in shapes:
            full.append(i)
    arch = dict(
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        num_global_tokens=tuple(globals_),
    )
    name = next(
        (
            f"ViL-{size}"
            for size, p in VIL_PRESETS.items()
            if all(p[k] == v for k, v in arch.items() if k in p)
        ),
        "a ViL",
    )
    args = ", ".join(f"{k}={v}" for k, v in arch.items())
    extra = f", full attention in stages {full}" if full else ""
    return f"{name} ({args}{extra})"


def adapt_vil_state_dict(
    state: Mapping[str, torch.Tensor],
    backbone_state: Mapping[str, torch.Tensor],
    prefix: str,
    source: str = "checkpoint",
    target: str = "ViL",
    bias_table: str = "centre",
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """
    Maps published ViL weights (classification or detection layout) onto a model with a ViL.

    Args:
        state: checkpoint weights.
        backbone_state: the ViL module's own ``state_dict()`` (names, shapes, shared or separate
            global projections, windows).
        prefix: the ViL's name prefix in the model, e.g. "backbone.bottom_up.".
        source: description of the checkpoint, for the report and errors.
        target: description of the model's backbone, for the report and errors.
        bias_table: how a full-attention bias table of another size is converted, "centre"
            (exact) or "bilinear" (as published); see :func:`convert_bias_table`.

    Returns:
        the weights to load into the model, and the report (missing keys listed, not raised).

    Raises:
        ArchitectureMismatchError: no ViL weights, absolute-position-embedding weights, another
            window, other numbers of global tokens, separate global weights for a model that
            shares them, or shapes that do not fit.
    """
    if bias_table not in BIAS_TABLE_CONVERSIONS:
        raise ValueError(
            f"bias_table={bias_table!r} is unknown; use one of {BIAS_TABLE_CONVERSIONS}"
        )
    src_prefix, backbone, out = split_backbone(state, _STEM, "ViL", source)
    full_layers = {
        m.group(1)
        for k in backbone
        for m in [_ATTN.match(k)]
        if m and m.group(4).startswith("qkv.")
    }
    layout = "ViL detection / Detectron2"
    if full_layers:
        stages = sorted({int(name[5]) for name in full_layers})
        layout = f"ViL classification (full attention in stages {stages}, split into query/kv)"
    target_desc = f"{target} at '{prefix}'" if prefix else target
    report = LoadReport(source=source, layout=layout, target=target_desc, passed_on=len(out))
    shapes = {k: tuple(v.shape) for k, v in backbone.items()}
    model_shapes = {k: tuple(v.shape) for k, v in backbone_state.items()}

    def mismatch(problem: str) -> ArchitectureMismatchError:
        return ArchitectureMismatchError(
            f"{source} does not fit {target_desc}: {problem}.\nThe checkpoint holds "
            f"{describe_vil(shapes)}, the model is {describe_vil(model_shapes)}. Build the model "
            "with the checkpoint's size (VIL_PRESETS / --model vil_*) and options"
        )

    bad = [k for k in backbone if _APE.search(k)]
    if bad:
        raise mismatch(
            f"{bad[0]} is an absolute position embedding; these weights are of a ViL with "
            "absolute positions (APE), and mvit_det implements the relative-position-bias models"
        )

    mapped: Dict[str, torch.Tensor] = {}  # model key -> tensor
    aliases: Dict[str, torch.Tensor] = {}  # checkpoint *_global tensors
    mismatches: List[str] = []
    for key, value in backbone.items():
        reason = next((why for pattern, why in _DROPPED if pattern.match(key)), None)
        if reason is not None:
            report.dropped.append((src_prefix + key, reason))
            continue
        m = _ATTN.match(key)
        layer, rest = (m.group(1), m.group(4)) if m else ("", "")
        if rest == "relative_position_index":
            _check_index(key, value, layer, full_layers, model_shapes, mismatch)
            report.dropped.append((src_prefix + key, "index buffer, recomputed by the model"))
            continue
        if rest.startswith(("query_global.", "kv_global.", "proj_global.")):
            aliases[key] = value
            continue
        if rest.startswith("qkv."):
            dim = value.shape[0] // 3
            mapped[f"{layer}.query.{rest[4:]}"] = value[:dim]
            mapped[f"{layer}.kv.{rest[4:]}"] = value[dim:]
            continue
        if rest == "local_relative_position_bias_table" and key in model_shapes:
            wanted = model_shapes[key]
            if tuple(value.shape) != wanted and value.shape[1:] == wanted[1:]:
                if layer not in full_layers:
                    raise mismatch(
                        f"{key} has {value.shape[0]} rows, a window of "
                        f"{_window_of(value.shape[0])}, the model's is {_window_of(wanted[0])}; "
                        "build the model with the checkpoint's window"
                    )
                window = _window_of(wanted[0])
                mapped[key] = convert_bias_table(value, window, bias_table)
                report.resized.append((prefix + key, tuple(value.shape), wanted))
                continue
        if key.endswith("cls_token") and key in model_shapes:
            if value.shape[1] != model_shapes[key][1]:
                raise mismatch(
                    f"{key} holds {value.shape[1]} global tokens, the model has "
                    f"{model_shapes[key][1]}; set num_global_tokens to the checkpoint's"
                )
        mapped[key] = value

    # *_global projections: aliases of the local ones in models that share them.
    model_shares = not any("_global." in k for k in model_shapes)
    for key, value in aliases.items():
        local = key.replace("_global.", ".")
        if model_shares:
            if local not in mapped or not torch.equal(value, mapped[local]):
                raise mismatch(
                    f"{key} differs from {local}: the checkpoint has separate global projections; "
                    "build the model with share_global_weights=False"
                )
            report.dropped.append((src_prefix + key, "alias of the shared local projection"))
        else:
            mapped[key] = value
    if not model_shares:  # a checkpoint that shares them: both start from the local weights
        for key in model_shapes:
            if "_global." in key and key not in mapped:
                local = key.replace("_global.", ".")
                if local in mapped:
                    mapped[key] = mapped[local]

    resized = {k for k, _, _ in report.resized}
    for key, value in mapped.items():
        if key not in model_shapes:
            mismatches.append(
                f"{src_prefix + key} {list(value.shape)}: no such tensor in the model"
            )
        elif tuple(value.shape) != model_shapes[key]:
            mismatches.append(
                f"{src_prefix + key}: checkpoint {list(value.shape)} vs model {list(model_shapes[key])}"
            )
        else:
            out[prefix + key] = value
            if prefix + key not in resized:
                report.loaded.append(prefix + key)
    if mismatches:
        shown = "\n  ".join(mismatches[:MAX_SHOWN])
        raise mismatch(
            f"{len(mismatches)} backbone tensors have other shapes or no place in the model. "
            f"First mismatches:\n  {shown}\n"
        )
    report.missing = [prefix + k for k in backbone_state if k not in mapped]
    if report.resized:
        how = "centre-embedded (exact)" if bias_table == "centre" else "bilinearly resized"
        report.layout += f"; full-attention bias tables {how} to the window"
    return out, report


def _check_index(
    key: str,
    value: torch.Tensor,
    layer: str,
    full_layers: set,
    model_shapes: Mapping[str, Shape],
    mismatch: Callable[[str], ArchitectureMismatchError],
) -> None:
    """Compares a checkpoint's ``relative_position_index`` with the one its layer type implies."""
    table = model_shapes.get(f"{layer}.local_relative_position_bias_table")
    window = _window_of(table[0]) if table else None
    if layer in full_layers:
        size = int(round(value.shape[0] ** 0.5))
        expected = full_attention_index(size)
        what = f"full attention on a {size}x{size} map"
    else:
        if window is None or tuple(value.shape) != (window**2, 9 * window**2):
            raise mismatch(
                f"{key} has shape {list(value.shape)}: the checkpoint's window differs from the "
                f"model's ({window}); build the model with the checkpoint's window"
            )
        expected = published_window_index(window)
        what = f"window {window}"
    if tuple(value.shape) != tuple(expected.shape) or not torch.equal(value.long(), expected):
        raise mismatch(f"{key} is not the relative-position index of {what}")
