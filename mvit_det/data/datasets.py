"""Dataset registration and checks with messages that say what is missing and how to fix it.

- COCO uses Detectron2's builtin names (``coco_2017_train``, ``coco_2017_val``, ...), whose files
  live under ``$DETECTRON2_DATASETS`` (default ``./datasets``).
- Any COCO-format JSON + image folder can be registered by name with
  :func:`register_coco_dataset` (or ``--register-coco NAME JSON IMAGES`` of the training tool, or
  the ``datasets`` node of a config).
- The synthetic shapes dataset (:mod:`mvit_det.data.shapes`) is registered as
  ``shapes_train`` / ``shapes_val`` under ``$DETECTRON2_DATASETS/mvit_shapes`` and generated on
  first use.
"""

import difflib
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import detectron2.data.datasets  # noqa: F401  (registers Detectron2's builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .shapes import SHAPE_CLASSES, generate_shapes_dataset, shapes_dataset_files

__all__ = [
    "SHAPES_DATASETS",
    "DatasetError",
    "UnknownDatasetError",
    "DatasetFilesNotFoundError",
    "datasets_root",
    "shapes_root",
    "register_coco_dataset",
    "register_shapes_dataset",
    "dataset_names",
    "register_datasets_from_config",
    "prepare_datasets",
]

SHAPES_DATASETS = {"shapes_train": "train", "shapes_val": "val"}


class DatasetError(Exception):
    """A dataset that cannot be used as configured; the message says why and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is not registered."""


class DatasetFilesNotFoundError(DatasetError, FileNotFoundError):
    """A registered dataset whose annotation file or image folder is missing."""


def datasets_root() -> str:
    """The folder Detectron2 reads builtin datasets from: ``$DETECTRON2_DATASETS`` or ./datasets."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_root() -> str:
    """Where the synthetic shapes dataset lives (``$DETECTRON2_DATASETS/mvit_shapes``)."""
    return os.path.join(datasets_root(), "mvit_shapes")


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """Registers a COCO-format instance dataset under ``name``.

    Registering the same name again with the same files is a no-op; with other files it is an
    error, so that a typo cannot silently train on the wrong data.

    Args:
        name: dataset name to use in ``dataloader.*.dataset.names``.
        json_file: COCO-format annotation file.
        image_root: folder that the JSON's ``file_name`` entries are relative to.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise DatasetError(
            f"Dataset '{name}' is already registered with json_file={meta.get('json_file')} and "
            f"image_root={meta.get('image_root')}; pick another name for {json_file}."
        )
    _check_files(name, json_file, image_root)
    register_coco_instances(name, {}, json_file, image_root)


def register_datasets_from_config(datasets: Mapping[str, Mapping[str, str]]) -> None:
    """Registers the entries of a config's ``datasets`` node.

    Args:
        datasets: ``{name: {"json_file": ..., "image_root": ...}}``.
    """
    for name, spec in datasets.items():
        missing = {"json_file", "image_root"} - set(spec.keys())
        if missing:
            raise DatasetError(
                f"Config entry datasets.{name} needs the keys json_file and image_root "
                f"(missing: {sorted(missing)})."
            )
        register_coco_dataset(name, spec["json_file"], spec["image_root"])


def _check_files(name: str, json_file: str, image_root: str) -> None:
    missing = [p for p in (json_file, image_root) if p and not os.path.exists(p)]
    if not missing:
        return
    hint = ""
    root = datasets_root()
    if os.path.abspath(json_file).startswith(os.path.abspath(root) + os.sep):
        hint = (
            f" Builtin datasets are read from $DETECTRON2_DATASETS (now "
            f"'{os.getenv('DETECTRON2_DATASETS', '<unset>')}', resolved to "
            f"'{os.path.abspath(root)}'): point it at the folder that contains e.g. coco/, "
            "see https://detectron2.readthedocs.io/en/latest/tutorials/builtin_datasets.html."
        )
    raise DatasetFilesNotFoundError(
        f"Dataset '{name}' expects annotations at '{json_file}' and images under "
        f"'{image_root}', but {' and '.join(repr(p) for p in missing)} "
        f"{'does' if len(missing) == 1 else 'do'} not exist.{hint}"
    )


def _load_shapes(name: str) -> List[Dict]:
    meta = MetadataCatalog.get(name)
    generate_shapes_dataset(meta.dataset_root)
    return load_coco_json(meta.json_file, meta.image_root, name)


def register_shapes_dataset(root: Optional[str] = None) -> None:
    """(Re-)registers ``shapes_train`` and ``shapes_val`` with their files under ``root``.

    This runs at import with the default root; call it to move the dataset elsewhere.

    Args:
        root: dataset folder; defaults to :func:`shapes_root`.
    """
    root = os.path.abspath(shapes_root() if root is None else root)
    for name, split in SHAPES_DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file, image_root = shapes_dataset_files(root, split)
        DatasetCatalog.register(name, lambda name=name: _load_shapes(name))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            dataset_root=root,
            evaluator_type="coco",
            thing_classes=list(SHAPE_CLASSES),
        )


def prepare_datasets(names: Iterable[str]) -> None:
    """Makes sure every named dataset can be loaded, before any model is built.

    Generates the synthetic shapes dataset if it is used and absent; for every other dataset
    checks that it is registered and that its files exist.

    Args:
        names: dataset names, e.g. from ``dataloader.train.dataset.names``.

    Raises:
        UnknownDatasetError: for an unregistered name (with the closest registered names).
        DatasetFilesNotFoundError: naming the files that were expected and where.
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name in SHAPES_DATASETS:
            generate_shapes_dataset(MetadataCatalog.get(name).dataset_root)
            continue
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
            raise UnknownDatasetError(
                f"Dataset '{name}' is not registered."
                + (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else "")
                + " Register a COCO-format dataset with "
                "'--register-coco NAME JSON_FILE IMAGE_ROOT' on the command line, a "
                "'datasets' entry in the config, or mvit_det.data.register_coco_dataset()."
            )
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") or meta.get("image_root"):
            _check_files(name, meta.get("json_file", ""), meta.get("image_root", ""))


def dataset_names(names: Union[str, Sequence[str]]) -> List[str]:
    """``names`` of a ``get_detection_dataset_dicts`` config as a list (it may be one string).

    Args:
        names: a string or a sequence of strings.
    """
    return [names] if isinstance(names, str) else list(names)


register_shapes_dataset()
