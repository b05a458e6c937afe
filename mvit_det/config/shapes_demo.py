"""The detector heads of the shapes demos (configs/demo/, projects/ViL/configs/demo/), shared so
that the demos of both backbones differ only in the backbone."""

from __future__ import annotations

from typing import Any

from detectron2.layers import ShapeSpec

__all__ = ["SHAPES_DEMO_CHANNELS", "use_shapes_demo_heads"]

SHAPES_DEMO_CHANNELS = 128


def use_shapes_demo_heads(model: Any, channels: int = SHAPES_DEMO_CHANNELS) -> None:
    """
    Shrinks a LazyConfig Mask R-CNN (FPN) to the size of the shapes demos, in place: FPN, RPN and
    box head at ``channels``, a 2-fc box head of 256, a 2-conv mask head of 64 channels, anchors of
    16-256 px, 128 RoIs per image (half positive), 3 classes.

    Args:
        model: the ``model`` node of a Mask R-CNN LazyConfig with an FPN backbone.
        channels: the FPN's output channels.
    """
    model.backbone.out_channels = channels
    model.proposal_generator.head.in_channels = channels
    model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    model.proposal_generator.pre_nms_topk = (1000, 500)
    model.proposal_generator.post_nms_topk = (500, 200)
    model.roi_heads.num_classes = 3
    model.roi_heads.batch_size_per_image = 128
    model.roi_heads.positive_fraction = 0.5
    model.roi_heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    model.roi_heads.box_head.fc_dims = [256, 256]
    model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
    model.roi_heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
    model.roi_heads.mask_head.conv_dims = [64, 64, 64]  # two 3x3 convs, then the deconv
