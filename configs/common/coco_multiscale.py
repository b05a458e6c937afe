"""COCO instance segmentation with the multi-scale recipe of the published MViTv2 T/S/B models.

Training: with probability 0.5, first a resize of the shorter side to 400, 500 or 600 and a random
crop of 384-600 pixels per side; then the shorter side to one of 480-800 in steps of 32 (the longer
at most 1333) and a horizontal flip. 64 images per iteration. Evaluation as in ``coco_lsj.py``
(shorter side 800, longer at most 1333).
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .coco_lsj import dataloader

dataloader.train.mapper.augmentations = [
    L(T.RandomApply)(
        tfm_or_aug=L(T.AugmentationList)(
            augs=[
                L(T.ResizeShortestEdge)(short_edge_length=[400, 500, 600], sample_style="choice"),
                L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            ]
        ),
        prob=0.5,
    ),
    L(T.ResizeShortestEdge)(
        short_edge_length=tuple(range(480, 801, 32)), sample_style="choice", max_size=1333
    ),
    L(T.RandomFlip)(horizontal=True),
]
# Crops clip the boxes; they are not recomputed from the masks in this recipe.
dataloader.train.mapper.recompute_boxes = False
