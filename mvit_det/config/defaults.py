"""``cfg.MODEL.MVIT`` keys for Detectron2's yacs configs."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from ..modeling.backbone.presets import mvit_preset

__all__ = ["add_mvit_config", "apply_mvit_preset"]


def add_mvit_config(cfg: CN) -> CN:
    """
    Adds the ``MODEL.MVIT`` keys (MViTv2-B by default) to a Detectron2 config, in place.

    Use with ``cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"``.

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.

    Returns:
        the same config.
    """
    c = cfg.MODEL.MVIT = CN()
    c.IMG_SIZE = 224
    c.EMBED_DIM = 96
    c.DEPTH = 24
    c.NUM_HEADS = 1
    c.LAST_BLOCK_INDEXES = [1, 4, 20, 23]
    c.QKV_POOL_KERNEL = [3, 3]
    c.ADAPTIVE_KV_STRIDE = 4
    c.ADAPTIVE_WINDOW_SIZE = 56
    c.RESIDUAL_POOLING = True
    c.MLP_RATIO = 4.0
    c.QKV_BIAS = True
    c.DROP_PATH_RATE = 0.4
    c.NORM_EPS = 1e-6
    c.USE_ABS_POS = False
    c.USE_REL_POS = True
    c.REL_POS_ZERO_INIT = True
    c.USE_ACT_CHECKPOINT = False
    c.PRETRAIN_IMG_SIZE = 224
    c.PRETRAIN_USE_CLS_TOKEN = True
    c.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    # "hybrid" (published), "global" or "window"
    c.ATTENTION_MODE = "hybrid"
    # None: the last block of stages 3-5 (hybrid mode only)
    c.GLOBAL_BLOCK_INDEXES = None
    c.DOUBLE_KV_STRIDE_IN_LAST_BLOCKS = True
    # "auto", "eager" or "sdpa"
    c.ATTN_IMPL = "auto"
    c.set_new_allowed(False)
    return cfg


def apply_mvit_preset(cfg: CN, size: str) -> CN:
    """
    Writes the structure of a named MViTv2 size into ``cfg.MODEL.MVIT``, in place.

    Args:
        cfg: a config that went through :func:`add_mvit_config`.
        size: "T", "S", "B", "L" or "H".

    Returns:
        the same config.
    """
    preset = mvit_preset(size)
    c = cfg.MODEL.MVIT
    c.EMBED_DIM = preset["embed_dim"]
    c.DEPTH = preset["depth"]
    c.NUM_HEADS = preset["num_heads"]
    c.LAST_BLOCK_INDEXES = list(preset["last_block_indexes"])
    c.DROP_PATH_RATE = preset["drop_path_rate"]
    c.USE_ACT_CHECKPOINT = preset.get("use_act_checkpoint", False)
    return cfg
