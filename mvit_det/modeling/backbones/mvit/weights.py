"""Mapping official, timm and Detectron2 MViT weights onto the MViT backbone."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ....checkpoint.errors import ArchitectureMismatchError
from ....checkpoint.mapping import MAX_SHOWN, LoadReport, Shape, split_backbone
from ..registry import PretrainedWeights
from .geometry import resize_abs_pos, resize_rel_pos
from .presets import MVIT_PRESETS

__all__ = ["MVIT_PRETRAINED", "adapt_state_dict", "describe_backbone", "timm_to_flat"]

# The official ImageNet weights of each size that the detection configs start from
# (``train.init_checkpoint`` of configs/mask_rcnn_mvitv2_{t,s,b,l,h}.py; checked by
# tests/test_hub.py). No SHA-256 of these files is recorded here: they load unpinned.
_IMAGENET = "detectron2://ImageNetPretrained/mvitv2/MViTv2_{}.pyth"
MVIT_PRETRAINED: Dict[str, PretrainedWeights] = {
    size: PretrainedWeights(_IMAGENET.format(name), f"official {data} classification")
    for size, name, data in (
        ("T", "T_in1k", "ImageNet-1K"),
        ("S", "S_in1k", "ImageNet-1K"),
        ("B", "B_in1k", "ImageNet-1K"),
        ("L", "L_in21k", "ImageNet-21K"),
        ("H", "H_in21k", "ImageNet-21K"),
    )
}

# Classification- and pretraining-only weights, with the reason they are dropped.
_DROPPED = (
    (re.compile(r"^cls_token$"), "class token (detection uses none)"),
    (re.compile(r"^norm\."), "final norm of the classifier"),
    (re.compile(r"^fc_norm\."), "final norm of the classifier (global pooling, MAE-style)"),
    (re.compile(r"^head\."), "classifier head"),
    (re.compile(r"^(decoder_|mask_token$)"), "MAE pretraining decoder"),
)
# Per-stage output norms: detection-only, absent from every ImageNet checkpoint.
_SCALE_NORM = re.compile(r"^scale\d+_norm\.")
_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def timm_to_flat(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """
    Renames timm ``mvitv2_*`` weights (staged) to the flat official/Detectron2 layout.

    ``stages.{s}.blocks.{j}.*`` becomes ``blocks.{i}.*`` (blocks numbered across stages) and
    ``shortcut_proj_attn`` becomes ``proj``; other names are the same in both layouts.

    Args:
        state: a timm state dict.

    Returns:
        the same tensors under flat names.

    Raises:
        ArchitectureMismatchError: a timm layout the detection backbone cannot express.
    """
    blocks_per_stage: Dict[int, int] = defaultdict(int)
    for key in state:
        m = _TIMM_BLOCK.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks_per_stage[stage] = max(blocks_per_stage[stage], block + 1)
    if sorted(blocks_per_stage) != list(range(len(blocks_per_stage))):
        raise ArchitectureMismatchError(
            f"timm-style weights with blocks in stages {sorted(blocks_per_stage)} only: stages "
            "are missing, so the file is incomplete or not an mvitv2 state dict"
        )
    first_block = [sum(blocks_per_stage[s] for s in range(stage)) for stage in blocks_per_stage]
    flat = {}
    for key, value in state.items():
        m = _TIMM_BLOCK.match(key)
        if m:
            rest = m.group(3)
            if rest.startswith("shortcut_proj_mlp."):
                raise ArchitectureMismatchError(
                    f"timm weights with {key!r}: this model changes the channels in the MLP of the "
                    "last block of each stage (timm expand_attn=False, the ImageNet-1K MViTv2-L "
                    "layout); the detection backbone changes them in the attention of the first "
                    "block, as Detectron2's does. Use weights with expand_attn=True (e.g. "
                    "mvitv2_large_cls / the official MViTv2_L_in21k)"
                )
            if rest.startswith(("attn.q.", "attn.k.", "attn.v.")):
                raise ArchitectureMismatchError(
                    f"timm weights with {key!r}: separate q/k/v projections (timm pool_first=True) "
                    "have no counterpart in the detection backbone, which uses one qkv projection"
                )
            rest = re.sub(r"^shortcut_proj_attn\.", "proj.", rest)
            key = f"blocks.{first_block[int(m.group(1))] + int(m.group(2))}.{rest}"
        flat[key] = value
    return flat


def describe_backbone(shapes: Mapping[str, Shape]) -> str:
    """
    Names the MViT size of flat backbone weights, for error messages.

    Args:
        shapes: flat backbone names (``patch_embed.proj.weight``, ``blocks.{i}.*``...) to shapes.

    Returns:
        e.g. "MViTv2-B (embed_dim=96, depth=24, num_heads=1, last_block_indexes=(1, 4, 20, 23))".
    """
    if "patch_embed.proj.weight" not in shapes:
        return "no MViT backbone (no patch_embed.proj.weight)"
    embed_dim = shapes["patch_embed.proj.weight"][0]
    blocks = sorted({int(m.group(1)) for k in shapes for m in [_BLOCK.match(k)] if m})
    if not blocks:
        return f"an MViT stem without blocks (embed_dim={embed_dim})"
    depth = blocks[-1] + 1
    mlp_changes_dim = [
        i
        for i in blocks
        if shapes.get(f"blocks.{i}.mlp.fc2.weight", (0,))[0]
        != shapes.get(f"blocks.{i}.attn.proj.weight", (0,))[0]
    ]
    if mlp_changes_dim:
        return (
            f"an MViT (embed_dim={embed_dim}, depth={depth}) whose blocks {mlp_changes_dim} change "
            "the channels in the MLP (ImageNet-1K MViTv2-L layout, DIM_MUL_IN_ATT=False), which "
            "the detection backbone does not support; use the IN-21K MViTv2-L weights instead"
        )
    last = tuple(i - 1 for i in blocks if f"blocks.{i}.proj.weight" in shapes) + (depth - 1,)
    head_dim = shapes.get("blocks.0.attn.norm_q.weight", (embed_dim,))[0]
    arch = dict(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim, last_block_indexes=last
    )
    name = next(
        (
            f"MViTv2-{size}"
            for size, p in MVIT_PRESETS.items()
            if all(p[k] == v for k, v in arch.items())
        ),
        "an MViT",
    )
    features = ["abs pos"] * ("pos_embed" in shapes) + ["rel pos"] * (
        "blocks.0.attn.rel_pos_h" in shapes
    )
    args = ", ".join(f"{k}={v}" for k, v in arch.items())
    return f"{name} ({args}{''.join(', ' + f for f in features)})"


def _has_cls_slot(num_positions: int) -> bool:
    """Whether an absolute position table of this length has a leading class-token slot."""
    if math.isqrt(num_positions) ** 2 == num_positions:
        return False
    if math.isqrt(num_positions - 1) ** 2 == num_positions - 1:
        return True
    raise ArchitectureMismatchError(
        f"absolute position embedding with {num_positions} positions: neither a square grid nor "
        "a square grid plus a class-token slot"
    )


def _resize_abs_pos(table: torch.Tensor, target: Shape) -> torch.Tensor:
    """Bicubically resizes a (1, N(+1), C) absolute position table to ``target``, cls slot kept."""
    src_cls, dst_cls = _has_cls_slot(table.shape[1]), _has_cls_slot(target[1])
    side = math.isqrt(target[1] - dst_cls)
    grid = resize_abs_pos(table.float(), src_cls, (side, side)).reshape(1, side * side, -1)
    if dst_cls:
        cls_slot = table[:, :1].float() if src_cls else grid.new_zeros(1, 1, grid.shape[-1])
        grid = torch.cat([cls_slot, grid], dim=1)
    return grid.to(table.dtype).contiguous()


def _resize(key: str, value: torch.Tensor, shape: Shape) -> Optional[torch.Tensor]:
    """Resizes a position table to ``shape`` when that is well defined; None otherwise."""
    if key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")):
        if value.dim() == 2 and len(shape) == 2 and value.shape[1] == shape[1]:
            return resize_rel_pos(value, shape[0]).contiguous()
    elif key == "pos_embed":
        if value.dim() == 3 and len(shape) == 3 and value.shape[2] == shape[2]:
            return _resize_abs_pos(value, shape)
    return None


def adapt_state_dict(
    state: Mapping[str, torch.Tensor],
    backbone_state: Mapping[str, torch.Tensor],
    prefix: str,
    source: str = "checkpoint",
    target: str = "MViT",
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """
    Maps checkpoint weights of any supported layout onto a model with an MViT backbone.

    The backbone weights (official/Detectron2 flat names at any prefix, or timm staged names)
    are renamed to ``prefix + flat name``; classification-only weights are dropped; relative- and
    absolute-position tables are interpolated to the model's shapes. Other tensors (FPN, heads)
    are passed on under their own names.

    Args:
        state: checkpoint weights.
        backbone_state: the MViT module's own ``state_dict()`` (for names and shapes).
        prefix: the MViT's name prefix in the model, e.g. "backbone.bottom_up.".
        source: description of the checkpoint, for the report and errors.
        target: description of the model's backbone, for the report and errors.

    Returns:
        the weights to load into the model, and the report. Missing backbone keys are listed in
        ``report.missing``; the caller decides whether they are fatal.

    Raises:
        ArchitectureMismatchError: no MViT weights in the checkpoint, or backbone tensors whose
            shapes cannot be mapped (e.g. MViTv2-B weights for an MViTv2-T model).
    """
    src_prefix, backbone, out = split_backbone(state, "patch_embed.proj.weight", "MViT", source)
    layout = "official/Detectron2 (flat)"
    if any(_TIMM_BLOCK.match(k) for k in backbone):
        backbone = timm_to_flat(backbone)
        layout = "timm (staged)"
    target_desc = f"{target} at '{prefix}'" if prefix else target
    report = LoadReport(source=source, layout=layout, target=target_desc, passed_on=len(out))

    mismatches: List[str] = []
    for key, value in backbone.items():
        reason = next((why for pattern, why in _DROPPED if pattern.match(key)), None)
        if reason is not None:
            report.dropped.append((src_prefix + key, reason))
            continue
        if key not in backbone_state:
            mismatches.append(
                f"{src_prefix + key} {list(value.shape)}: no such tensor in the model"
            )
            continue
        shape = tuple(backbone_state[key].shape)
        if tuple(value.shape) != shape:
            resized = _resize(key, value, shape)
            if resized is None:
                mismatches.append(
                    f"{src_prefix + key}: checkpoint {list(value.shape)} vs model {list(shape)}"
                )
                continue
            report.resized.append((prefix + key, tuple(value.shape), shape))
            value = resized
        else:
            report.loaded.append(prefix + key)
        out[prefix + key] = value
    if mismatches:
        shapes = {k: tuple(v.shape) for k, v in backbone.items()}
        model_shapes = {k: tuple(v.shape) for k, v in backbone_state.items()}
        shown = "\n  ".join(mismatches[:MAX_SHOWN])
        held, built = describe_backbone(shapes), describe_backbone(model_shapes)
        cause = (
            f"the checkpoint holds {held}, the model is {built}. Build the model with the "
            "checkpoint's size (MVIT_PRESETS / --model) and options (use_abs_pos, use_rel_pos)"
            if held != built
            else f"both are {built}, so the model's options or the file's tensors differ; "
            "check use_abs_pos, use_rel_pos and the other MViT options, and that the file was "
            "not edited"
        )
        raise ArchitectureMismatchError(
            f"{source} does not fit {target_desc}: {len(mismatches)} backbone tensors have other "
            f"shapes or no place in the model. First mismatches:\n  {shown}\nLikely cause: {cause}"
        )
    has_scale_norms = any(_SCALE_NORM.match(k) for k in backbone)
    for key in backbone_state:
        if key not in backbone:
            if _SCALE_NORM.match(key) and not has_scale_norms:
                report.new.append(prefix + key)
            else:
                report.missing.append(prefix + key)
    return out, report
