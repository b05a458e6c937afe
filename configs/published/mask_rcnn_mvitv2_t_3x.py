"""Mask R-CNN, MViTv2-T (ImageNet-1K init), the published multi-scale recipe, 3x (36 epochs).

Detectron2's published MViTv2-T Mask R-CNN: the LSJ config ``mask_rcnn_mvitv2_t.py`` with the
multi-scale training data of ``common/coco_multiscale.py`` instead of LSJ.
"""

from mvit_det import mvit_preset

from ..common.coco_multiscale import dataloader
from ..common.mask_rcnn_mvitv2 import IMAGENET_WEIGHTS, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(mvit_preset("T"))
train.init_checkpoint = IMAGENET_WEIGHTS.format("T_in1k")
