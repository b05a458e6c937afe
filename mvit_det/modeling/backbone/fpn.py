"""MViT + FPN: the helper for Python/LazyConfig users and the yacs ``BACKBONE_REGISTRY`` builder."""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .mvit import MViT

__all__ = ["build_mvit_fpn", "build_mvit_fpn_backbone", "mvit_kwargs_from_cfg"]


def build_mvit_fpn(
    bottom_up: MViT,
    in_features: Optional[Sequence[str]] = None,
    out_channels: int = 256,
    norm: str = "",
    fuse_type: str = "sum",
    square_pad: int = 0,
) -> FPN:
    """
    Puts Detectron2's FPN on an MViT: P2-P5 from scale2-scale5 and P6 by max pooling P5.

    FPN needs inputs whose sides are multiples of 32 (``fpn.size_divisibility``); Detectron2's
    GeneralizedRCNN pads its batches accordingly.

    Args:
        bottom_up: the MViT backbone.
        in_features: MViT outputs to use, finest first; default: all of ``bottom_up``'s outputs.
        out_channels: FPN channels.
        norm: normalisation of the FPN convs ("" for none, "LN", "GN", ...).
        fuse_type: "sum" or "avg".
        square_pad: if > 0, images are padded to this square size.

    Returns:
        the FPN backbone with outputs p2..p6.
    """
    in_features = list(in_features or bottom_up.output_shape().keys())
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=norm,
        top_block=LastLevelMaxPool(),
        fuse_type=fuse_type,
        square_pad=square_pad,
    )


def mvit_kwargs_from_cfg(cfg: CfgNode, in_chans: int = 3) -> dict:
    """Translates ``cfg.MODEL.MVIT`` (see :func:`mvit_det.add_mvit_config`) into MViT kwargs."""
    c = cfg.MODEL.MVIT
    return dict(
        img_size=c.IMG_SIZE,
        in_chans=in_chans,
        embed_dim=c.EMBED_DIM,
        depth=c.DEPTH,
        num_heads=c.NUM_HEADS,
        last_block_indexes=tuple(c.LAST_BLOCK_INDEXES),
        qkv_pool_kernel=tuple(c.QKV_POOL_KERNEL),
        adaptive_kv_stride=c.ADAPTIVE_KV_STRIDE,
        adaptive_window_size=c.ADAPTIVE_WINDOW_SIZE,
        residual_pooling=c.RESIDUAL_POOLING,
        mlp_ratio=c.MLP_RATIO,
        qkv_bias=c.QKV_BIAS,
        drop_path_rate=c.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=c.NORM_EPS),
        use_abs_pos=c.USE_ABS_POS,
        use_rel_pos=c.USE_REL_POS,
        rel_pos_zero_init=c.REL_POS_ZERO_INIT,
        use_act_checkpoint=c.USE_ACT_CHECKPOINT,
        pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        pretrain_use_cls_token=c.PRETRAIN_USE_CLS_TOKEN,
        out_features=tuple(c.OUT_FEATURES),
        attention_mode=c.ATTENTION_MODE,
        global_block_indexes=(
            tuple(c.GLOBAL_BLOCK_INDEXES) if c.GLOBAL_BLOCK_INDEXES is not None else None
        ),
        double_kv_stride_in_last_blocks=c.DOUBLE_KV_STRIDE_IN_LAST_BLOCKS,
        attn_impl=c.ATTN_IMPL,
    )


@BACKBONE_REGISTRY.register()
def build_mvit_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """
    ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"``: MViT (``cfg.MODEL.MVIT``) with FPN
    (``cfg.MODEL.FPN.OUT_CHANNELS / NORM / FUSE_TYPE``; ``IN_FEATURES`` defaults to all MViT
    outputs).
    """
    bottom_up = MViT(**mvit_kwargs_from_cfg(cfg, in_chans=input_shape.channels))
    return build_mvit_fpn(
        bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES or None,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
