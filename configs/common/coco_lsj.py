"""COCO instance segmentation with Large Scale Jitter at 1024x1024, 64 images per iteration.

Evaluation resizes the shorter side to 800 pixels (the longer at most 1333), as the published
MViTv2 COCO models were evaluated, so that their weights reproduce the published AP here.
"""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from mvit_det.data import lsj_train_augmentations

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=lsj_train_augmentations(1024, min_scale=0.1, max_scale=2.0),
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,  # crops cut boxes: recompute them from the cropped masks
    ),
    total_batch_size=64,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
