"""The shipped yacs YAMLs with Detectron2's yacs machinery: same models, same test-time input and
the same COCO evaluation as the LazyConfigs."""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import pytest
import torch
from detectron2.config import get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from omegaconf import ListConfig
from PIL import Image

import mvit_det  # noqa: F401  (the one import: MODEL.MVIT keys, backbone builder, datasets)
from mvit_det import mvit_kwargs_from_cfg, vil_kwargs_from_cfg
from mvit_det.data import generate_shapes_dataset, register_coco_dataset
from mvit_det.engine import apply_overrides_checked
from mvit_det.model_zoo import get_config, list_configs
from mvit_det.tools.evaluate import evaluate_model
from mvit_det.tools.loading import load_model

from helpers import REPO

YACS = os.path.join(REPO, "configs", "yacs")
RECIPES = [f"{m}_mvitv2_{s}" for m in ("mask_rcnn", "cascade_mask_rcnn") for s in "tsblh"]
DEMO = "demo/mask_rcnn_mvitv2_shapes"
# Every shipped YAML with a LazyConfig twin of the same name, and the test-time resize both must
# use: (shorter side, longer side at most). The COCO recipes evaluate as the published MViTv2
# models (800 / 1333), the shapes demo at its LSJ size (192: the longer side becomes 192).
EXPECTED_TEST_RESIZE = {**{name: (800, 1333) for name in RECIPES}, DEMO: (192, 192)}
IMAGENET_RGB_MEAN = [123.675, 116.28, 103.53]
IMAGENET_RGB_STD = [58.395, 57.12, 57.375]
TINY_LAZY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
]
TINY_YACS = [
    "MODEL.MVIT.EMBED_DIM", "16",
    "MODEL.MVIT.DEPTH", "4",
    "MODEL.MVIT.LAST_BLOCK_INDEXES", "[0, 1, 2, 3]",
]  # fmt: skip


def yacs_cfg(name: str, opts=()):
    cfg = get_cfg()  # no add_mvit_config needed after `import mvit_det`
    cfg.merge_from_file(os.path.join(YACS, name + ".yaml"))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("name", RECIPES)
def test_yaml_backbone_arguments_equal_the_lazy_config(name):
    lazy = get_config(name + ".py").model.backbone.bottom_up
    kwargs = mvit_kwargs_from_cfg(yacs_cfg(name))
    for key, value in lazy.items():
        if key == "_target_":
            continue
        if key == "norm_layer":
            assert kwargs[key].keywords == value.keywords
        else:
            expected = tuple(value) if not isinstance(value, (int, float, str, bool)) else value
            assert kwargs[key] == expected, key


def _same_model(yaml_name, lazy_name, lazy_opts, yacs_opts):
    """Builds both; asserts equal state-dict keys and shapes; gives them equal weights."""
    cfg = get_config(lazy_name)
    apply_overrides_checked(cfg, lazy_opts)
    torch.manual_seed(0)
    lazy_model = instantiate(cfg.model).eval()
    yacs_model = build_model(yacs_cfg(yaml_name, yacs_opts)).eval()
    lazy_state, yacs_state = lazy_model.state_dict(), yacs_model.state_dict()
    assert list(lazy_state) == list(yacs_state)
    assert all(lazy_state[k].shape == yacs_state[k].shape for k in lazy_state)
    yacs_model.load_state_dict(lazy_state)
    return cfg, lazy_model, yacs_model


@pytest.mark.parametrize(
    "yaml_name, lazy_name",
    [
        ("mask_rcnn_mvitv2_t", "mask_rcnn_mvitv2_t.py"),
        ("cascade_mask_rcnn_mvitv2_t", "cascade_mask_rcnn_mvitv2_t.py"),
        ("demo/mask_rcnn_mvitv2_shapes", "demo/mask_rcnn_mvitv2_shapes.py"),
    ],
)
def test_yaml_model_equals_the_lazy_model(yaml_name, lazy_name, shapes_datasets_root):
    lazy_opts = TINY_LAZY + ["model.proposal_generator.post_nms_topk=[64,32]"]
    yacs_opts = TINY_YACS + ["MODEL.RPN.POST_NMS_TOPK_TEST", "32"]
    _, lazy_model, yacs_model = _same_model(yaml_name, lazy_name, lazy_opts, yacs_opts)
    for model in (lazy_model, yacs_model):  # untrained: keep low scores, but only a few
        for module in model.modules():
            if isinstance(module, FastRCNNOutputLayers):
                module.test_score_thresh, module.test_topk_per_image = 0.0, 10
    image = detection_utils.read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], "RGB")
    inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 100,
               "width": 120}]  # fmt: skip
    with torch.no_grad():
        expected = lazy_model(inputs)[0]["instances"]
        actual = yacs_model(inputs)[0]["instances"]
    assert len(expected) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, e = actual.get(field), expected.get(field)
        a, e = (a.tensor, e.tensor) if field == "pred_boxes" else (a, e)
        assert torch.equal(a, e), field


def test_detectron2_yacs_trainer_and_predictor(shapes_datasets_root, tmp_path):
    """What Detectron2's tools/train_net.py and demo/demo.py do with a shipped YAML."""
    opts = TINY_YACS + [
        "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.STEPS", "(1,)",
        "SOLVER.WARMUP_ITERS", "1",
        "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "160",
        "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "160",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    cfg = yacs_cfg("demo/mask_rcnn_mvitv2_shapes", opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=False)
        before = trainer.model.backbone.bottom_up.patch_embed.proj.weight.detach().clone()
        trainer.train()
    weight = trainer.model.backbone.bottom_up.patch_embed.proj.weight
    assert not torch.equal(before, weight)
    assert os.path.isfile(tmp_path / "model_final.pth")

    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    predictor = DefaultPredictor(cfg)  # reads BGR images, converts to the config's RGB
    assert torch.equal(predictor.model.backbone.bottom_up.patch_embed.proj.weight, weight)
    image_bgr = detection_utils.read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], "BGR")
    instances = predictor(image_bgr)["instances"]
    assert instances.image_size == image_bgr.shape[:2]
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(instances.get_fields())


def _short_edges(resize: T.ResizeShortestEdge) -> set:
    """Every shorter-side length the resize may pick."""
    lengths = resize.short_edge_length
    return set(range(lengths[0], lengths[1] + 1)) if resize.is_range else set(lengths)


def _resize_fields(augmentations: Iterable[T.Augmentation]) -> List[tuple]:
    """(type, possible shorter sides, longest side, interpolation) of each test augmentation."""
    fields = []
    for aug in augmentations:
        assert isinstance(aug, T.ResizeShortestEdge), aug
        fields.append((type(aug), _short_edges(aug), aug.max_size, aug.interp))
    return fields


def _names(names: Any) -> List[str]:
    """A config's dataset names (one string or a sequence) as a list."""
    return [names] if isinstance(names, str) else list(names)


@pytest.mark.parametrize("name", RECIPES + [DEMO])
def test_yaml_test_input_equals_the_lazy_config(name: str) -> None:
    """Test-time resize, channel order, normalisation and test dataset of each YAML and its twin."""
    lazy = get_config(name + ".py")
    cfg = yacs_cfg(name)
    lazy_resize = _resize_fields(instantiate(a) for a in lazy.dataloader.test.mapper.augmentations)
    # What Detectron2's DatasetMapper (DefaultTrainer.test, the yacs evaluation) builds from a cfg.
    yacs_resize = _resize_fields(detection_utils.build_augmentation(cfg, is_train=False))
    assert yacs_resize == lazy_resize
    short, longest = EXPECTED_TEST_RESIZE[name]
    assert lazy_resize == [(T.ResizeShortestEdge, {short}, longest, Image.BILINEAR)]

    assert cfg.INPUT.FORMAT == lazy.dataloader.test.mapper.image_format == "RGB"
    assert lazy.model.input_format == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == list(lazy.model.pixel_mean) == IMAGENET_RGB_MEAN
    assert list(cfg.MODEL.PIXEL_STD) == list(lazy.model.pixel_std) == IMAGENET_RGB_STD
    assert list(cfg.DATASETS.TEST) == _names(lazy.dataloader.test.dataset.names)


FEW_DETECTIONS_LAZY = [
    "model.proposal_generator.post_nms_topk=[100,100]",
    "model.roi_heads.box_predictor.test_topk_per_image=10",
]
FEW_DETECTIONS_YACS = ["MODEL.RPN.POST_NMS_TOPK_TEST", "100", "TEST.DETECTIONS_PER_IMAGE", "10"]


@pytest.fixture(scope="module")
def one_shapes_image(tmp_path_factory: pytest.TempPathFactory) -> Iterable[str]:
    """The first image of the generated shapes val split, registered alone as a COCO dataset."""
    root = str(tmp_path_factory.mktemp("one_shapes_image"))
    generate_shapes_dataset(root, {"val": 1})
    name = "yacs_test_shapes_val_1"
    register_coco_dataset(
        name, os.path.join(root, "annotations", "instances_val.json"), os.path.join(root, "val")
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _coco_evaluation(
    config: str, weights: str, opts: Sequence[str], dataset: str, output_dir: Path
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """
    What tools/evaluate.py does for one ``--model CONFIG WEIGHTS OPTS``, keeping the records.

    Args:
        config: a LazyConfig or yacs config file.
        weights: the checkpoint.
        opts: config overrides.
        dataset: a registered dataset.
        output_dir: where COCOEvaluator writes ``coco_instances_results.json``.

    Returns:
        COCOEvaluator's metrics and the detections in COCO result format.
    """
    loaded = load_model(config, weights, "cpu", opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_model(loaded, dataset, str(output_dir), warmup=0)
    records = json.loads((output_dir / "coco_instances_results.json").read_text())
    return result["metrics"], records


@pytest.mark.parametrize(
    "name, lazy_opts, yacs_opts, dataset",
    [
        (DEMO, [], [], "shapes_val"),
        # 3 classes for the shapes categories; one image (the COCO test size costs seconds).
        ("mask_rcnn_mvitv2_t", ["model.roi_heads.num_classes=3"],
         ["MODEL.ROI_HEADS.NUM_CLASSES", "3"], "one_shapes_image"),
    ],
)  # fmt: skip
def test_yaml_coco_evaluation_equals_the_lazy_config(
    name: str,
    lazy_opts: List[str],
    yacs_opts: List[str],
    dataset: str,
    shapes_datasets_root: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Same weights, each config's own test resize (no INPUT / augmentation overrides): the same
    detections on every image and the same COCO AP."""
    if dataset == "one_shapes_image":
        dataset = request.getfixturevalue("one_shapes_image")
    # Fewer proposals and detections per image (pasting 100 masks per image is most of the time).
    lazy_opts = TINY_LAZY + FEW_DETECTIONS_LAZY + lazy_opts
    yacs_opts = TINY_YACS + FEW_DETECTIONS_YACS + yacs_opts
    cfg = get_config(name + ".py")
    apply_overrides_checked(cfg, lazy_opts)
    torch.manual_seed(0)
    weights = str(tmp_path / "fresh.pth")
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)

    lazy_dir, yacs_dir = tmp_path / "lazy", tmp_path / "yacs"
    lazy_metrics, lazy_records = _coco_evaluation(
        os.path.join(REPO, "configs", name + ".py"), weights, lazy_opts, dataset, lazy_dir
    )
    yacs_metrics, yacs_records = _coco_evaluation(
        os.path.join(YACS, name + ".yaml"), weights, yacs_opts, dataset, yacs_dir
    )
    image_ids = {d["image_id"] for d in DatasetCatalog.get(dataset)}
    assert {r["image_id"] for r in lazy_records} == image_ids  # detections on every image
    assert yacs_records == lazy_records  # boxes, scores, classes, masks
    for task in ("bbox", "segm"):
        lazy_ap, yacs_ap = lazy_metrics[task], yacs_metrics[task]
        assert set(yacs_ap) == set(lazy_ap) and "AP" in lazy_ap
        for key, value in lazy_ap.items():
            assert yacs_ap[key] == value or math.isnan(yacs_ap[key]) and math.isnan(value), key


# ---------------------------------------------------------------- ViL
VIL_RECIPES = [
    f"{m}_vil_{s}_{x}" for m in ("mask_rcnn", "retinanet") for s in "tsmb" for x in ("1x", "3x")
]
VIL_DEMO = "demo/mask_rcnn_vil_shapes"
# Each ViL YAML and its LazyConfig twin.
VIL_TWINS = {name: f"projects/ViL/configs/COCO/{name}.py" for name in VIL_RECIPES}
VIL_TWINS[VIL_DEMO] = "projects/ViL/configs/demo/mask_rcnn_vil_shapes.py"
# A 4-pair ViL with stages of 1, 1, 1, 1 pairs, as LazyConfig and yacs overrides.
TINY_VIL_LAZY = [
    "model.backbone.bottom_up.embed_dims=[16,16,24,32]",
    "model.backbone.bottom_up.depths=[1,1,1,1]",
    "model.backbone.bottom_up.num_heads=[1,1,2,2]",
]
TINY_VIL_YACS = [
    "MODEL.VIL.EMBED_DIMS", "[16, 16, 24, 32]",
    "MODEL.VIL.DEPTHS", "[1, 1, 1, 1]",
    "MODEL.VIL.NUM_HEADS", "[1, 1, 2, 2]",
]  # fmt: skip


def test_every_vil_lazy_config_has_a_yaml():
    shipped = {n for n in list_configs() if n.startswith("projects/ViL/configs/")}
    assert shipped == set(VIL_TWINS.values())
    for name in VIL_TWINS:
        assert os.path.isfile(os.path.join(YACS, name + ".yaml")), name


@pytest.mark.parametrize("name", list(VIL_TWINS))
def test_vil_yaml_backbone_arguments_and_test_input_equal_the_lazy_config(name):
    lazy = get_config(VIL_TWINS[name])
    cfg = yacs_cfg(name)
    kwargs = vil_kwargs_from_cfg(cfg)
    expected = {**vil_kwargs_from_cfg(get_cfg()), "in_chans": 3}  # ViL's own defaults ...
    for key, value in lazy.model.backbone.bottom_up.items():  # ... with the config's arguments
        if key != "_target_":
            expected[key] = value if isinstance(value, (int, float, str, bool)) else tuple(value)
    assert kwargs.keys() == expected.keys()
    for key, value in expected.items():
        if key == "norm_layer":
            assert kwargs[key].func is value.func and kwargs[key].keywords == value.keywords
        else:
            assert kwargs[key] == value, key
    # test-time resize, channel order, normalisation, test dataset
    lazy_resize = _resize_fields(instantiate(a) for a in lazy.dataloader.test.mapper.augmentations)
    assert _resize_fields(detection_utils.build_augmentation(cfg, is_train=False)) == lazy_resize
    assert cfg.INPUT.FORMAT == lazy.dataloader.test.mapper.image_format == lazy.model.input_format
    assert list(cfg.MODEL.PIXEL_MEAN) == list(lazy.model.pixel_mean) == IMAGENET_RGB_MEAN
    assert list(cfg.MODEL.PIXEL_STD) == list(lazy.model.pixel_std) == IMAGENET_RGB_STD
    assert list(cfg.DATASETS.TEST) == _names(lazy.dataloader.test.dataset.names)


def _module_settings(model: torch.nn.Module) -> Dict[str, Any]:
    """Every plain attribute of every module (numbers, strings, flags, their lists; matchers'
    thresholds), by module name: what a config sets besides the parameters."""
    plain = (int, float, bool, str, type(None))
    other = object()  # anything else (tensors, modules, callables)

    def value(v: Any) -> Any:
        if isinstance(v, Matcher):
            return ("Matcher", value(v.thresholds), value(v.labels), v.allow_low_quality_matches)
        if isinstance(v, (list, tuple, ListConfig)):
            items = tuple(value(x) for x in v)
            return other if any(x is other for x in items) else items
        return v if isinstance(v, plain) else other

    settings = {}
    for module_name, module in model.named_modules():
        for key, v in vars(module).items():
            v = value(v)
            if not key.startswith("_") and key != "training" and v is not other:
                settings[f"{module_name}.{key}"] = v
    return settings


# Untrained models: keep low scores, but only a few detections (each size has the same modules
# but for the backbone, whose arguments the test above compares; 1x and 3x differ in training).
RCNN_FEW_LAZY = [
    "model.proposal_generator.post_nms_topk=[64,32]",
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
    "model.roi_heads.box_predictor.test_topk_per_image=10",
]
RCNN_FEW_YACS = [
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip


@pytest.mark.parametrize(
    "name, lazy_opts, yacs_opts",
    [
        ("mask_rcnn_vil_t_1x", RCNN_FEW_LAZY, RCNN_FEW_YACS),
        ("retinanet_vil_t_3x",
         ["model.test_score_thresh=0.0", "model.test_topk_candidates=100",
          "model.max_detections_per_image=10"],
         ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
          "100", "TEST.DETECTIONS_PER_IMAGE", "10"]),
        (VIL_DEMO, RCNN_FEW_LAZY, RCNN_FEW_YACS),
    ],
)  # fmt: skip
def test_vil_yaml_model_predicts_as_the_lazy_model(
    name, lazy_opts, yacs_opts, shapes_datasets_root
):
    """Same modules, parameter names and shapes (a small backbone in both, the rest as shipped),
    the same settings in every module (thresholds, losses, anchors: training ones too), and with
    the same weights, identical detections."""
    _, lazy_model, yacs_model = _same_model(
        name, VIL_TWINS[name], TINY_VIL_LAZY + lazy_opts, TINY_VIL_YACS + yacs_opts
    )
    lazy_settings = _module_settings(lazy_model)
    assert len(lazy_settings) > 300 and _module_settings(yacs_model) == lazy_settings
    image = detection_utils.read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], "RGB")
    inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 100,
               "width": 120}]  # fmt: skip
    with torch.no_grad():
        expected = lazy_model(inputs)[0]["instances"]
        actual = yacs_model(inputs)[0]["instances"]
    assert len(expected) > 0 and set(actual.get_fields()) == set(expected.get_fields())
    for field in expected.get_fields():
        a, e = actual.get(field), expected.get(field)
        a, e = (a.tensor, e.tensor) if field == "pred_boxes" else (a, e)
        assert torch.equal(a, e), field
