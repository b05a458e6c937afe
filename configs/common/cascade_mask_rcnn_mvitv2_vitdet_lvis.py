"""Root config: the ViTDet-style MViTv2 Cascade Mask R-CNN on LVIS v1 (MViTv2-B IN-21K, 100ep).

``cascade_mask_rcnn_mvitv2_vitdet.py`` trained on ``lvis_v1_train`` (1203 classes) with
repeat-factor sampling (threshold 0.001) and a federated sigmoid loss whose class weights are the
LVIS image counts to the power 0.5; up to 300 detections per image above score 0.02, evaluated
with the LVIS evaluator (the ``lvis`` package) on ``lvis_v1_val``. 100 epochs of LVIS: 156,250
iterations at 64 images, lr 1e-4.
"""

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation.lvis_evaluation import LVISEvaluator

from mvit_det.data.lvis import fed_loss_class_weights

from .cascade_mask_rcnn_mvitv2_vitdet import (
    IMAGENET_WEIGHTS,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
    )
)
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(
    dataset_name="${..test.dataset.names}", max_dets_per_image=300
)

model.roi_heads.num_classes = 1203
for predictor in model.roi_heads.box_predictors:
    predictor.update(
        test_score_thresh=0.02,
        test_topk_per_image=300,
        use_sigmoid_ce=True,
        use_fed_loss=True,
        get_fed_loss_cls_weights=L(fed_loss_class_weights)(
            dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
        ),
    )

# 100 epochs: 156,250 iterations x 64 images / 100,000 images per epoch.
train.max_iter = 156250
train.eval_period = 30000
lr_multiplier.scheduler.milestones = [138889, 150463]
lr_multiplier.warmup_length = 250 / train.max_iter
optimizer.lr = 1e-4  # at 64 images per iteration
