"""The shipped yacs YAMLs with Detectron2's yacs machinery: same models as the LazyConfigs."""

import os
import warnings

import pytest
import torch
from detectron2.config import get_cfg, instantiate
from detectron2.data import DatasetCatalog, detection_utils
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

import mvit_det  # noqa: F401  (the one import: MODEL.MVIT keys, backbone builder, datasets)
from mvit_det import mvit_kwargs_from_cfg
from mvit_det.engine import apply_overrides_checked
from mvit_det.model_zoo import get_config

from helpers import REPO

YACS = os.path.join(REPO, "configs", "yacs")
RECIPES = [f"{m}_mvitv2_{s}" for m in ("mask_rcnn", "cascade_mask_rcnn") for s in "tsblh"]
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
