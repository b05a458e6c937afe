"""Root config: Cascade Mask R-CNN with an MViTv2 + FPN backbone, LSJ 1024, 3x schedule.

Three cascade stages at IoU 0.5 / 0.6 / 0.7 with class-agnostic box regression and 4conv+1fc box
heads; the box and mask head convs use a BatchNorm that stays synchronised and valid for empty
inputs. The size-specific files pick the MViTv2 size; this file is MViTv2-B.
"""

from functools import partial

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import NaiveSyncBatchNorm
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_mvitv2 import IMAGENET_WEIGHTS, dataloader, lr_multiplier, model, optimizer, train

# Synchronised BN that also accepts empty inputs (heads may see no RoI on some GPU).
sync_bn = partial(NaiveSyncBatchNorm, stats_mode="N")

# Cascade R-CNN takes one box head, predictor and matcher per stage instead of these.
for key in ("box_head", "box_predictor", "proposal_matcher"):
    model.roi_heads.pop(key)
model.roi_heads.update(
    _target_=CascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256, 256, 256, 256],
            fc_dims=[1024],
            conv_norm=sync_bn,
        )
        for _ in range(3)
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w_xy, w_xy, w_wh, w_wh)),
            cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}",
        )
        for w_xy, w_wh in [(10, 5), (20, 10), (30, 15)]
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
        for iou in [0.5, 0.6, 0.7]
    ],
)
model.roi_heads.mask_head.conv_norm = sync_bn
# Two 3x3 convs in the RPN head, as the published Cascade models.
model.proposal_generator.head.conv_dims = [-1, -1]
