"""Datasets (COCO, custom COCO-format, synthetic shapes) and LSJ augmentation helpers."""

from .datasets import (
    SHAPES_DATASETS,
    DatasetError,
    DatasetFilesNotFoundError,
    InvalidDatasetError,
    UnknownDatasetError,
    add_register_coco_argument,
    check_coco_dataset,
    dataset_names,
    datasets_root,
    prepare_datasets,
    register_coco_dataset,
    register_datasets_from_config,
    register_shapes_dataset,
    shapes_root,
)
from .lsj import lsj_test_augmentations, lsj_train_augmentations
from .shapes import SHAPE_CLASSES, generate_shapes_dataset

__all__ = [
    "SHAPES_DATASETS",
    "DatasetError",
    "DatasetFilesNotFoundError",
    "InvalidDatasetError",
    "UnknownDatasetError",
    "SHAPE_CLASSES",
    "add_register_coco_argument",
    "check_coco_dataset",
    "dataset_names",
    "datasets_root",
    "generate_shapes_dataset",
    "lsj_test_augmentations",
    "lsj_train_augmentations",
    "prepare_datasets",
    "register_coco_dataset",
    "register_datasets_from_config",
    "register_shapes_dataset",
    "shapes_root",
]
