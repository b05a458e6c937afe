"""MViT + FPN for Python and LazyConfig users (the yacs builder is in :mod:`mvit_det.config`)."""

from __future__ import annotations

from typing import Optional, Sequence

from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .mvit import MViT

__all__ = ["build_mvit_fpn"]


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
