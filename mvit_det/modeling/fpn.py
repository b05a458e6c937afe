"""Detectron2's FPN on a backbone of any family, for Python and LazyConfig users and for the yacs
builders (:mod:`mvit_det.config.yacs`)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

__all__ = ["NECKS", "build_backbone_fpn", "build_mvit_fpn", "build_retinanet_fpn"]


def build_backbone_fpn(
    bottom_up: Backbone,
    in_features: Optional[Sequence[str]] = None,
    out_channels: int = 256,
    norm: str = "",
    fuse_type: str = "sum",
    square_pad: int = 0,
) -> FPN:
    """
    Puts Detectron2's FPN on a backbone: P2-P5 from scale2-scale5 and P6 by max pooling P5, as
    for (Cascade) Mask R-CNN.

    FPN needs inputs whose sides are multiples of 32 (``fpn.size_divisibility``); Detectron2's
    GeneralizedRCNN pads its batches accordingly.

    Args:
        bottom_up: the backbone (MViT, ViL, ...).
        in_features: backbone outputs to use, finest first; default: all of ``bottom_up``'s
            outputs.
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


# The MViT name of :func:`build_backbone_fpn`, which it was first written for.
build_mvit_fpn = build_backbone_fpn


def build_retinanet_fpn(
    bottom_up: Backbone,
    in_features: Optional[Sequence[str]] = None,
    out_channels: int = 256,
    norm: str = "",
    fuse_type: str = "sum",
) -> FPN:
    """
    Puts Detectron2's FPN on a backbone as for RetinaNet: P3-P5 from scale3-scale5 and P6, P7
    computed from the last backbone output (C5).

    Args:
        bottom_up: the backbone.
        in_features: backbone outputs to use, finest first; default: scale3, scale4, scale5.
        out_channels: FPN channels.
        norm: normalisation of the FPN convs.
        fuse_type: "sum" or "avg".

    Returns:
        the FPN backbone with outputs p3..p7.
    """
    in_features = list(in_features or ["scale3", "scale4", "scale5"])
    last = in_features[-1]
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=norm,
        top_block=LastLevelP6P7(bottom_up.output_shape()[last].channels, out_channels, last),
        fuse_type=fuse_type,
    )


# The necks a family's yacs builders may name (``BackboneFamily.yacs_builders``).
NECKS: Dict[str, Callable[..., FPN]] = {
    "fpn": build_backbone_fpn,
    "retinanet_fpn": build_retinanet_fpn,
}
