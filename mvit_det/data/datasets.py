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
import json
import argparse
import os
import stat
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union

import detectron2.data.datasets  # noqa: F401  (registers Detectron2's builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .shapes import SHAPE_CLASSES, generate_shapes_dataset, shapes_dataset_files

__all__ = [
    "add_register_coco_argument",
    "SHAPES_DATASETS",
    "DatasetError",
    "UnknownDatasetError",
    "DatasetFilesNotFoundError",
    "InvalidDatasetError",
    "check_coco_dataset",
    "datasets_root",
    "shapes_root",
    "register_coco_dataset",
    "register_shapes_dataset",
    "dataset_names",
    "register_datasets_from_config",
    "prepare_datasets",
]

SHAPES_DATASETS = {"shapes_train": "train", "shapes_val": "val"}
# Datasets registered by register_coco_dataset, whose annotations prepare_datasets checks.
_CUSTOM_DATASETS: Set[str] = set()
# How many problems of one kind an error message lists.
_MAX_SHOWN = 5


class DatasetError(Exception):
    """A dataset that cannot be used as configured; the message says why and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is not registered."""


class DatasetFilesNotFoundError(DatasetError, FileNotFoundError):
    """A registered dataset whose annotation file or image folder is missing."""


class InvalidDatasetError(DatasetError, ValueError):
    """A dataset whose annotation file or images cannot be used as they are."""


def datasets_root() -> str:
    """The folder Detectron2 reads builtin datasets from: ``$DETECTRON2_DATASETS`` or ./datasets."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_root() -> str:
    """Where the synthetic shapes dataset lives (``$DETECTRON2_DATASETS/mvit_shapes``)."""
    return os.path.join(datasets_root(), "mvit_shapes")


def add_register_coco_argument(parser: argparse.ArgumentParser) -> None:
    """
    Adds ``--register-coco NAME JSON_FILE IMAGE_ROOT`` (repeatable; ``args.register_coco``, a
    list of triples for :func:`register_coco_dataset`), the one definition the tools share.

    Args:
        parser: a tool's argument parser.
    """
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable); use the name where the "
        "tool takes a dataset (e.g. --dataset NAME, or dataloader.train.dataset.names=NAME)",
    )


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
    if not needs_registration(name, json_file, image_root):
        return
    register_coco_instances(name, {}, json_file, image_root)
    _CUSTOM_DATASETS.add(name)


def needs_registration(name: str, json_file: str, image_root: str) -> bool:
    """
    Whether ``name`` still has to be registered for these files: False when it already is
    (registering again is a no-op), True after checking that the files exist.

    Args:
        name: dataset name.
        json_file: absolute path of the annotation file.
        image_root: absolute path of the image folder.

    Raises:
        DatasetError: ``name`` is registered with other files, so that a typo cannot silently
            train on the wrong data; or the files are missing.
    """
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return False
        raise DatasetError(
            f"Dataset '{name}' is already registered with json_file={meta.get('json_file')} and "
            f"image_root={meta.get('image_root')}; pick another name for {json_file}."
        )
    _check_files(name, json_file, image_root)
    return True


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
    if json_file and os.path.isdir(json_file):
        raise InvalidDatasetError(
            f"Dataset '{name}': the annotation file '{json_file}' is a folder; give the COCO JSON "
            "file itself (e.g. annotations/instances_train.json)."
        )
    if image_root and os.path.isfile(image_root):
        raise InvalidDatasetError(
            f"Dataset '{name}': the image root '{image_root}' is a file; give the folder that the "
            "JSON's file_name entries are relative to."
        )
    missing = [p for p in (json_file, image_root) if p and not os.path.exists(p)]
    if not missing:
        _check_file_kinds(name, json_file, image_root)
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


def _kind(path: str) -> str:
    """What ``path`` is, for messages about files that are neither regular files nor folders."""
    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_file_kinds(name: str, json_file: str, image_root: str) -> None:
    """The annotation file must be a regular file (reading a FIFO or a device such as /dev/zero
    would block or never end) and the image root a folder."""
    if json_file and not os.path.isfile(json_file):
        raise InvalidDatasetError(
            f"Dataset '{name}': the annotation file '{json_file}' is {_kind(json_file)}, not a "
            "regular file; give the COCO JSON file itself."
        )
    if image_root and not os.path.isdir(image_root):
        raise InvalidDatasetError(
            f"Dataset '{name}': the image root '{image_root}' is {_kind(image_root)}, not a "
            "folder; give the folder that the JSON's file_name entries are relative to."
        )


def _listing(items: Sequence[Any]) -> str:
    """The first few items and the count of the rest, for messages."""
    shown = ", ".join(str(item) for item in items[:_MAX_SHOWN])
    return shown + (f" and {len(items) - _MAX_SHOWN} more" if len(items) > _MAX_SHOWN else "")


def _read_coco_json(name: str, json_file: str) -> Dict[str, Any]:
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InvalidDatasetError(
            f"Dataset '{name}': '{json_file}' is not valid JSON: {e.msg} at line {e.lineno}, "
            f"column {e.colno}."
        ) from None
    except (UnicodeDecodeError, OSError) as e:
        raise InvalidDatasetError(f"Dataset '{name}': cannot read '{json_file}': {e}.") from None
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise InvalidDatasetError(
            f"Dataset '{name}': '{json_file}' is not a COCO instances file: it needs the lists "
            f"{', '.join(lists)} at its top level."
        )
    return data


def _empty_segmentation(segmentation: Any) -> bool:
    """Whether a COCO ``segmentation`` holds no usable polygon or mask."""
    if isinstance(segmentation, dict):  # RLE
        return not segmentation.get("counts")
    if isinstance(segmentation, list):
        return not any(isinstance(p, list) and len(p) >= 6 for p in segmentation)
    return True


def check_coco_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    num_classes: Optional[int] = None,
    for_training: bool = False,
    check_masks: bool = False,
) -> None:
    """Checks a COCO-format dataset's annotations and image files before anything is trained.

    Args:
        name: the dataset's name, for messages.
        json_file: its COCO instances JSON.
        image_root: the folder its ``file_name`` entries are relative to.
        num_classes: the model's number of classes; more categories than that are an error.
        for_training: the dataset is trained on: it needs annotations.
        check_masks: the model trains masks: every annotation needs a non-empty segmentation.

    Raises:
        InvalidDatasetError: naming the file, the problem and examples of it.
    """
    data = _read_coco_json(name, json_file)
    categories = data["categories"]
    if num_classes is not None and len(categories) > num_classes:
        raise InvalidDatasetError(
            f"Dataset '{name}' has {len(categories)} categories "
            f"({_listing([c.get('name') for c in categories])}) but the model predicts "
            f"{num_classes} classes; set model.roi_heads.num_classes={len(categories)}."
        )
    ids = [image.get("id") for image in data["images"]]
    not_ints = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
    if not_ints:
        raise InvalidDatasetError(
            f"Dataset '{name}': {len(not_ints)} images in '{json_file}' have an id that is not an "
            f"integer ({_listing([repr(i) for i in not_ints])}); COCO image ids are integers, "
            "and annotations refer to them by image_id."
        )
    image_ids = [a.get("image_id") for a in data["annotations"]]
    bad_refs = [i for i in image_ids if isinstance(i, bool) or not isinstance(i, int)]
    if bad_refs:
        raise InvalidDatasetError(
            f"Dataset '{name}': {len(bad_refs)} annotations in '{json_file}' have an image_id "
            f"that is not an integer ({_listing([repr(i) for i in bad_refs])})."
        )
    missing, empty, special = [], [], []
    for image in data["images"]:
        path = os.path.join(image_root, image.get("file_name", ""))
        if not os.path.exists(path):
            missing.append(path)
        elif not os.path.isfile(path):
            special.append(path)  # a folder, FIFO or device: reading it fails or never ends
        elif os.path.getsize(path) == 0:
            empty.append(path)
    if missing or empty or special:
        problems = [f"{len(missing)} missing: {_listing(missing)}"] * bool(missing)
        problems += [f"{len(special)} not regular files: {_listing(special)}"] * bool(special)
        problems += [f"{len(empty)} empty (0 bytes): {_listing(empty)}"] * bool(empty)
        count = len(missing) + len(empty) + len(special)
        raise InvalidDatasetError(
            f"Dataset '{name}': {count} of the {len(data['images'])} images "
            f"listed in '{json_file}' cannot be read under '{image_root}' ({'; '.join(problems)})."
        )
    annotations = data["annotations"]
    if for_training and not annotations:
        raise InvalidDatasetError(
            f"Dataset '{name}': '{json_file}' has no annotations, so there is nothing to train on."
        )
    category_ids = {c.get("id") for c in categories}
    unknown = [a.get("id") for a in annotations if a.get("category_id") not in category_ids]
    if unknown:
        raise InvalidDatasetError(
            f"Dataset '{name}': {len(unknown)} annotations in '{json_file}' have a category_id "
            f"that is not among its categories (annotation ids {_listing(unknown)})."
        )
    if check_masks:
        unusable = [
            a.get("id")
            for a in annotations
            if not a.get("iscrowd") and _empty_segmentation(a.get("segmentation"))
        ]
        if unusable:
            raise InvalidDatasetError(
                f"Dataset '{name}': {len(unusable)} annotations in '{json_file}' have an empty or "
                f"missing segmentation, which the mask head cannot train on (annotation ids "
                f"{_listing(unusable)}); give them a polygon or RLE mask, or remove them."
            )


def _load_shapes(name: str) -> List[Dict]:
    meta = MetadataCatalog.get(name)
    generate_shapes_dataset(meta.dataset_root)
    return load_coco_json(meta.json_file, meta.image_root, name)


def register_shapes_dataset(root: Optional[str] = None) -> None:
    """(Re-)registers ``shapes_train`` and ``shapes_val`` with their files under ``root``.

    ``import mvit_det`` runs it with the default root; call it to move the dataset elsewhere.

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


def prepare_datasets(
    names: Iterable[str],
    *,
    num_classes: Optional[int] = None,
    check_content: bool = True,
    for_training: bool = False,
    check_masks: bool = False,
) -> None:
    """Makes sure every named dataset can be loaded, before any model is built.

    Generates the synthetic shapes dataset if it is used and absent; for every other dataset
    checks that it is registered and that its files exist, and for datasets registered with
    :func:`register_coco_dataset`, with ``check_content``, their annotations and images (see
    :func:`check_coco_dataset`). For other datasets whose metadata lists their classes (e.g.
    Detectron2's COCO), the number of classes is checked.

    Args:
        names: dataset names, e.g. from ``dataloader.train.dataset.names``.
        num_classes: the model's number of classes, if it has one.
        check_content: read the annotation files of custom datasets and look for their images.
        for_training: the datasets are trained on (they need annotations).
        check_masks: the model trains masks (annotations need segmentations).

    Raises:
        UnknownDatasetError: for an unregistered name (with the closest registered names).
        DatasetFilesNotFoundError: naming the files that were expected and where.
        InvalidDatasetError: for unusable annotation files or images.
        LVISNotInstalledError: for an LVIS dataset when the ``lvis`` package is missing.
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
        json_file, image_root = meta.get("json_file", ""), meta.get("image_root", "")
        if json_file or image_root:
            _check_files(name, json_file, image_root)
        from .lvis import require_lvis_api  # (imports this module)

        require_lvis_api(name)
        if name in _CUSTOM_DATASETS and check_content:
            check_coco_dataset(
                name,
                json_file,
                image_root,
                num_classes=num_classes,
                for_training=for_training,
                check_masks=check_masks,
            )
        classes = meta.get("thing_classes", None)
        if num_classes is not None and classes is not None and len(classes) > num_classes:
            raise InvalidDatasetError(
                f"Dataset '{name}' has {len(classes)} classes but the model predicts "
                f"{num_classes}; set model.roi_heads.num_classes={len(classes)}."
            )


def dataset_names(names: Union[str, Sequence[str]]) -> List[str]:
    """``names`` of a ``get_detection_dataset_dicts`` config as a list (it may be one string).

    Args:
        names: a string or a sequence of strings.
    """
    return [names] if isinstance(names, str) else list(names)
