"""Large Scale Jitter (LSJ) augmentation lists for Detectron2's ``DatasetMapper``, as configs.

LSJ (Ghiasi et al., "Simple Copy-Paste ...", 2021): random horizontal flip, resize so that the
image fits a randomly scaled square target (scale 0.1-2.0 of ``image_size``), then a random
``image_size`` x ``image_size`` crop (padded when the image is smaller). Boxes must be recomputed
from the cropped masks, which is what ``DatasetMapper(recompute_boxes=True)`` does; cropping
polygon masks needs ``shapely``.
"""

from typing import List

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from omegaconf import DictConfig

__all__ = ["lsj_train_augmentations", "lsj_test_augmentations"]


def lsj_train_augmentations(
    image_size: int, min_scale: float = 0.1, max_scale: float = 2.0
) -> List[DictConfig]:
    """LazyConfig nodes of the LSJ training augmentations.

    Args:
        image_size: side of the square training crop.
        min_scale: smallest random scale of the resize target, relative to ``image_size``.
        max_scale: largest random scale of the resize target.
    """
    return [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(
            min_scale=min_scale,
            max_scale=max_scale,
            target_height=image_size,
            target_width=image_size,
        ),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    ]


def lsj_test_augmentations(image_size: int) -> List[DictConfig]:
    """LazyConfig nodes of the LSJ test resize: the longer side becomes ``image_size``.

    Args:
        image_size: the training crop side.
    """
    return [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
