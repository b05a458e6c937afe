"""LVIS datasets as Detectron2 reads them: its builtin names and your own LVIS-format files.

Detectron2 registers ``lvis_v1_train`` / ``lvis_v1_val`` (and v0.5) with their files under
``$DETECTRON2_DATASETS/lvis`` and the COCO images under ``$DETECTRON2_DATASETS/coco``; it reads
them, and evaluates on them (``LVISEvaluator``), with the ``lvis`` package. Registered datasets
carry ``evaluator_type="lvis"`` in their metadata, which is how the tools pick the LVIS evaluator.
"""

import importlib.util
import json
import os
from functools import partial
from typing import Callable, Dict, List, Sequence, Union

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.detection_utils import get_fed_loss_cls_weights

from .datasets import DatasetError, InvalidDatasetError, needs_registration

__all__ = [
    "LVISNotInstalledError",
    "fed_loss_class_weights",
    "is_lvis_dataset",
    "lvis_api_available",
    "register_lvis_dataset",
    "require_lvis_api",
]

LVIS_PACKAGE_HINT = "pip install lvis"


class LVISNotInstalledError(DatasetError, ImportError):
    """An LVIS dataset is used but the ``lvis`` package that reads and evaluates it is missing."""


def lvis_api_available() -> bool:
    """Whether the ``lvis`` package (LVIS's reader and evaluation API) can be imported."""
    return importlib.util.find_spec("lvis") is not None


def is_lvis_dataset(name: str) -> bool:
    """Whether the registered dataset ``name`` is in LVIS format (``evaluator_type == "lvis"``).

    Args:
        name: a registered dataset name.
    """
    return MetadataCatalog.get(name).get("evaluator_type", None) == "lvis"


def require_lvis_api(name: str) -> None:
    """Raises :class:`LVISNotInstalledError` when ``name`` is an LVIS dataset and the ``lvis``
    package is missing; does nothing otherwise.

    Args:
        name: a registered dataset name.
    """
    if is_lvis_dataset(name) and not lvis_api_available():
        raise LVISNotInstalledError(
            f"Dataset '{name}' is in LVIS format: reading it and evaluating on it (LVISEvaluator) "
            f"need the 'lvis' package, which is not installed. Install it with "
            f"'{LVIS_PACKAGE_HINT}'."
        )


def fed_loss_class_weights(
    dataset_names: Union[str, Sequence[str]], freq_weight_power: float = 0.5
) -> Callable[[], torch.Tensor]:
    """
    The ``get_fed_loss_cls_weights`` argument of Detectron2's ``FastRCNNOutputLayers``: a function
    that returns the federated-loss weight of each class, its number of training images (the
    ``class_image_count`` metadata of the datasets) to the power ``freq_weight_power``.

    Args:
        dataset_names: the training datasets, e.g. ``"lvis_v1_train"``.
        freq_weight_power: the power of the image counts.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    return partial(get_fed_loss_cls_weights, names, freq_weight_power)


def _lvis_categories(name: str, json_file: str) -> List[Dict]:
    """The categories of an LVIS-format file, checked to have the ids 1..N that Detectron2's
    reader maps to the classes 0..N-1."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, OSError) as e:
        raise InvalidDatasetError(f"Dataset '{name}': cannot read '{json_file}': {e}.") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise InvalidDatasetError(
            f"Dataset '{name}': '{json_file}' is not an LVIS file: it needs the lists images, "
            "annotations and categories at its top level."
        )
    categories = sorted(data["categories"], key=lambda c: c.get("id", 0))
    ids = [c.get("id") for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise InvalidDatasetError(
            f"Dataset '{name}': the category ids of '{json_file}' must be 1..{len(ids)} as in "
            f"LVIS (Detectron2 reads category id k as class k - 1); they are {ids[:10]}"
            + (" ..." if len(ids) > 10 else "")
        )
    missing_url = [i.get("id") for i in data["images"] if "coco_url" not in i]
    if missing_url:
        raise InvalidDatasetError(
            f"Dataset '{name}': {len(missing_url)} images of '{json_file}' have no coco_url; "
            "Detectron2's LVIS reader finds each image as IMAGE_ROOT/<folder>/<file> from the "
            f"last two parts of its coco_url (image ids {missing_url[:5]})."
        )
    return categories


def register_lvis_dataset(name: str, json_file: str, image_root: str) -> None:
    """Registers an LVIS-format instance dataset under ``name``, as Detectron2 registers its
    builtin LVIS splits: read with Detectron2's ``load_lvis_json`` (the ``lvis`` package), image
    files at ``image_root/<folder>/<file>`` from each image's ``coco_url``, metadata
    ``evaluator_type="lvis"``, the class names, and (when every category has an ``image_count``)
    ``class_image_count`` for the federated loss.

    Registering the same name again with the same files is a no-op.

    Args:
        name: dataset name to use in ``dataloader.*.dataset.names``.
        json_file: LVIS-format annotation file.
        image_root: the folder holding the image folders named in the ``coco_url`` entries.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if not needs_registration(name, json_file, image_root):
        return
    categories = _lvis_categories(name, json_file)

    def load() -> List[Dict]:
        require_lvis_api(name)
        # Detectron2 joins image_root and the coco_url folder as strings.
        return load_lvis_json(json_file, os.path.join(image_root, ""))

    DatasetCatalog.register(name, load)
    meta = dict(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        thing_classes=[c.get("name", str(c["id"])) for c in categories],
    )
    if all("image_count" in c for c in categories):
        meta["class_image_count"] = [
            {"id": c["id"], "image_count": c["image_count"]} for c in categories
        ]
    MetadataCatalog.get(name).set(**meta)
