"""configs/published/: every published MViTv2 detection recipe, value by value.

The reference recipes are written out below literally, from Detectron2's own files:
``projects/MViTv2/configs/`` (multi-scale Mask R-CNN T 3x, Cascade T/S/B 3x, Cascade B IN-21K 3x;
LSJ Cascade L IN-21K 50ep and H IN-21K 3x; their loaders ``common/coco_loader.py`` and
``common/coco_loader_lsj.py``) and ``projects/ViTDet/configs/{COCO,LVIS}/`` (the ViTDet-style
MViTv2 Cascade Mask R-CNN B/L/H IN-21K and ``common/coco_loader_lsj.py``), over Detectron2's
model-zoo ``common/`` files (``models/mask_rcnn_fpn.py``, ``data/coco.py``, ``optim.py``,
``train.py``). Each is compared with what our config instantiates: the augmentations with their
arguments, the mapper, batch, datasets, sampler and evaluator, the LR at every step that matters,
the optimizer's LR and weight decay of every parameter, the train settings, and the model: the
MViT arguments, every module outside the MViT with its settings, and every parameter and buffer
shape against the reference model built here with Detectron2's own ``MViT`` (so the parameter
count equals that of the published model's structure).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT
from detectron2.data.detection_utils import get_fed_loss_cls_weights
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.lvis_evaluation import LVISEvaluator
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import NaiveSyncBatchNorm
from detectron2.modeling import MViT as Detectron2MViT
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig, ListConfig, OmegaConf

from mvit_det import MViT
from mvit_det.model_zoo import get_config, get_config_file, list_configs, resolve_config_file

WEIGHTS = "detectron2://ImageNetPretrained/mvitv2/MViTv2_{}.pyth"

# --- The reference recipes, literally --------------------------------------------------------

# MViT arguments of each size (mask_rcnn_mvitv2_t_3x.py; the S/B/L/H files change these).
MVIT_T = dict(
    embed_dim=96, depth=10, num_heads=1, last_block_indexes=(0, 2, 7, 9), drop_path_rate=0.2
)
MVIT_S = dict(MVIT_T, depth=16, last_block_indexes=(0, 2, 13, 15))
MVIT_B = dict(MVIT_T, depth=24, last_block_indexes=(1, 4, 20, 23), drop_path_rate=0.4)
MVIT_L = dict(
    MVIT_B,
    embed_dim=144,
    depth=48,
    num_heads=2,
    last_block_indexes=(1, 7, 43, 47),
    drop_path_rate=0.5,
)
MVIT_H = dict(MVIT_B, embed_dim=192, depth=80, num_heads=3, last_block_indexes=(3, 11, 71, 79),
              drop_path_rate=0.6, use_act_checkpoint=True)  # fmt: skip
MVIT_COMMON = dict(
    residual_pooling=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale2", "scale3", "scale4", "scale5"),
)

# projects/MViTv2/configs/common/coco_loader.py (batch 64 set by mask_rcnn_mvitv2_t_3x.py)
MULTISCALE_TRAIN = [
    T.RandomApply(
        T.AugmentationList(
            [
                T.ResizeShortestEdge(short_edge_length=[400, 500, 600], sample_style="choice"),
                T.RandomCrop(crop_type="absolute_range", crop_size=(384, 600)),
            ]
        ),
        prob=0.5,
    ),
    T.ResizeShortestEdge(
        short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
        sample_style="choice",
        max_size=1333,
    ),
    T.RandomFlip(horizontal=True),
]
# projects/MViTv2/configs/common/coco_loader_lsj.py (FixedSizeCrop pads: its default)
MVIT_LSJ_TRAIN = [
    T.RandomFlip(horizontal=True),
    T.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024),
    T.FixedSizeCrop(crop_size=(1024, 1024)),
]
# projects/ViTDet/configs/common/coco_loader_lsj.py (no padding: the backbone pads squares)
VITDET_LSJ_TRAIN = [
    T.RandomFlip(horizontal=True),
    T.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024),
    T.FixedSizeCrop(crop_size=(1024, 1024), pad=False),
]
TEST_800 = [T.ResizeShortestEdge(short_edge_length=800, max_size=1333)]
TEST_1024 = [T.ResizeShortestEdge(short_edge_length=1024, max_size=1024)]

MVITV2_OVERRIDES = {
    "pos_embed": {"weight_decay": 0.0},
    "rel_pos_h": {"weight_decay": 0.0},
    "rel_pos_w": {"weight_decay": 0.0},
}
VITDET_OVERRIDES = {"pos_embed": {"weight_decay": 0.0}}


def recipe(**values: Any) -> Dict[str, Any]:
    """A reference recipe; unnamed values are those of projects/MViTv2/configs/*_3x.py."""
    base = dict(
        method="cascade", vitdet=False, lvis=False, mvit=MVIT_T, weights="T_in1k",
        train_augs=MULTISCALE_TRAIN, recompute_boxes=False, test_augs=TEST_800,
        max_iter=67500, milestones=[52500, 62500, 67500], num_updates=None,
        warmup_length=250 / 67500, lr=1.6e-4, overrides=MVITV2_OVERRIDES, eval_period=5000,
        published_params_m=None,
    )  # fmt: skip
    unknown = set(values) - set(base)
    assert not unknown, unknown
    return {**base, **values}


LSJ = dict(train_augs=MVIT_LSJ_TRAIN, recompute_boxes=True)
# ViTDet COCO B 100ep: 184375 iterations, milestones [163889, 177546], lr 8e-5.
VITDET = dict(
    vitdet=True, train_augs=VITDET_LSJ_TRAIN, recompute_boxes=True, test_augs=TEST_1024,
    max_iter=184375, milestones=[163889, 177546], num_updates=184375,
    warmup_length=250 / 184375, lr=8e-5, overrides=VITDET_OVERRIDES,
)  # fmt: skip
# The LVIS B file on top of it: 156250 iterations, milestones [138889, 150463], lr 1e-4.
VITDET_LVIS = dict(
    VITDET, lvis=True, max_iter=156250, milestones=[138889, 150463], num_updates=156250,
    warmup_length=250 / 156250, lr=1e-4, eval_period=30000,
)  # fmt: skip

RECIPES: Dict[str, Dict[str, Any]] = {
    "published/mask_rcnn_mvitv2_t_3x.py": recipe(method="mask_rcnn", published_params_m=44),
    "published/cascade_mask_rcnn_mvitv2_t_3x.py": recipe(published_params_m=76),
    "published/cascade_mask_rcnn_mvitv2_s_3x.py": recipe(
        mvit=MVIT_S, weights="S_in1k", published_params_m=87
    ),
    "published/cascade_mask_rcnn_mvitv2_b_3x.py": recipe(
        mvit=MVIT_B, weights="B_in1k", published_params_m=103
    ),
    "published/cascade_mask_rcnn_mvitv2_b_in21k_3x.py": recipe(
        mvit=MVIT_B, weights="B_in21k", published_params_m=103
    ),
    # 50ep = 184375 // 2 iterations, milestones [163889 // 2, 177546 // 2]
    "published/cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py": recipe(
        **LSJ, mvit=MVIT_L, weights="L_in21k", max_iter=92187, milestones=[81944, 88773],
        num_updates=92187, warmup_length=250 / 92187, lr=1e-4,
    ),  # fmt: skip
    # the lr of cascade_mask_rcnn_mvitv2_b_3x.py, which this file does not change
    "published/cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x.py": recipe(
        **LSJ, mvit=MVIT_H, weights="H_in21k", published_params_m=718
    ),
    "published/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py": recipe(
        **VITDET, mvit=MVIT_B, weights="B_in21k"
    ),
    # max_iter and milestones halved; warmup_length left at 250 / 184375 of the run
    "published/cascade_mask_rcnn_mvitv2_l_in21k_50ep.py": recipe(
        **dict(VITDET, max_iter=92187, milestones=[81944, 88773], num_updates=92187),
        mvit=MVIT_L, weights="L_in21k",
    ),  # fmt: skip
    "published/cascade_mask_rcnn_mvitv2_h_in21k_36ep.py": recipe(
        **dict(VITDET, max_iter=67500, milestones=[52500, 62500, 67500], num_updates=None,
               warmup_length=250 / 67500, lr=1.6e-4),
        mvit=MVIT_H, weights="H_in21k",
    ),  # fmt: skip
    "published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py": recipe(
        **VITDET_LVIS, mvit=MVIT_B, weights="B_in21k"
    ),
    "published/LVIS/cascade_mask_rcnn_mvitv2_l_in21k_50ep.py": recipe(
        **dict(VITDET_LVIS, max_iter=78125, milestones=[69444, 75231], num_updates=78125,
               warmup_length=250 / 78125, lr=4e-5),
        mvit=MVIT_L, weights="L_in21k",
    ),  # fmt: skip
    "published/LVIS/cascade_mask_rcnn_mvitv2_h_in21k_50ep.py": recipe(
        **dict(VITDET_LVIS, max_iter=78125, milestones=[69444, 75231], num_updates=78125,
               warmup_length=250 / 78125, lr=2e-5),
        mvit=MVIT_H, weights="H_in21k",
    ),  # fmt: skip
}
NAMES = sorted(RECIPES)


def reference_model(ref: Dict[str, Any]):
    """The reference model config, built as the reference files build it, with Detectron2's
    MViT (mask_rcnn_mvitv2_t_3x.py, cascade_mask_rcnn_mvitv2_t_3x.py,
    ViTDet/configs/COCO/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py, LVIS/ on top)."""
    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    constants = model_zoo.get_config("common/data/constants.py").constants
    model.pixel_mean = constants.imagenet_rgb256_mean
    model.pixel_std = constants.imagenet_rgb256_std
    model.input_format = "RGB"
    model.backbone.bottom_up = L(Detectron2MViT)(**ref["mvit"], **MVIT_COMMON)
    model.backbone.in_features = "${.bottom_up.out_features}"
    if ref["method"] == "mask_rcnn":
        return model
    conv_norm = lambda c: NaiveSyncBatchNorm(c, stats_mode="N")  # noqa: E731
    if ref["vitdet"]:
        model.backbone.square_pad = 1024
        model.backbone.norm = "LN"
        model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = "LN"
        conv_norm = "LN"
    for k in ["box_head", "box_predictor", "proposal_matcher"]:
        model.roi_heads.pop(k)
    model.roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=256, height=7, width=7),
                conv_dims=[256, 256, 256, 256],
                fc_dims=[1024],
                conv_norm=conv_norm,
            )
            for _ in range(3)
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
            for th in [0.5, 0.6, 0.7]
        ],
    )
    if not ref["vitdet"]:
        model.roi_heads.mask_head.conv_norm = lambda c: NaiveSyncBatchNorm(c, stats_mode="N")
    model.proposal_generator.head.conv_dims = [-1, -1]
    if ref["lvis"]:
        model.roi_heads.num_classes = 1203
        for i in range(3):
            model.roi_heads.box_predictors[i].test_score_thresh = 0.02
            model.roi_heads.box_predictors[i].test_topk_per_image = 300
            model.roi_heads.box_predictors[i].use_sigmoid_ce = True
            model.roi_heads.box_predictors[i].use_fed_loss = True
            model.roi_heads.box_predictors[i].get_fed_loss_cls_weights = (
                lambda: get_fed_loss_cls_weights("lvis_v1_train", 0.5)
            )
    return model


# --- Comparison helpers -----------------------------------------------------------------------

_MODULE_BASE = set(vars(nn.Module()))


def plain(value: Any, depth: int = 2) -> Any:
    """A value as comparable plain data: numbers, strings, tuples, dicts; tensors by shape,
    modules by type, other objects by type and (to ``depth``) their attributes."""
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(plain(v, depth) for v in value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape))
    if isinstance(value, nn.Module):
        return ("module", type(value).__name__)
    if isinstance(value, type):
        return ("class", value.__name__)
    if isinstance(value, partial):
        return ("partial", plain(value.func, depth), plain(value.args), plain(value.keywords))
    if callable(value) and not hasattr(value, "__dict__"):
        return ("callable", getattr(value, "__name__", type(value).__name__))
    if depth > 0 and hasattr(value, "__dict__"):
        attrs = {k: plain(v, depth - 1) for k, v in vars(value).items() if not k.startswith("__")}
        return (type(value).__name__, attrs)
    return type(value).__name__


def describe_modules(model: nn.Module, skip: str) -> Dict[str, Any]:
    """Every module outside ``skip`` (a module name prefix): its type and settings."""
    described = {}
    for name, module in model.named_modules():
        if name == skip or name.startswith(skip + "."):
            continue
        attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_BASE}
        described[name] = (type(module).__name__, plain(attrs))
    return described


def describe_augs(augs: List[Any]) -> List[Any]:
    """Augmentations as (type, arguments), nested ones (RandomApply, AugmentationList) included."""
    out = []
    for aug in augs:
        attrs = {}
        for key, value in vars(aug).items():
            if isinstance(value, T.Augmentation):
                value = describe_augs([value])[0]
            elif (
                isinstance(value, (list, tuple)) and value and isinstance(value[0], T.Augmentation)
            ):
                value = describe_augs(list(value))
            else:
                value = plain(value)
            attrs[key] = value
        out.append((type(aug).__name__, attrs))
    return out


def build(model_cfg) -> nn.Module:
    """The model of a config on the meta device (shapes without memory)."""
    linspace = torch.linspace

    def cpu_linspace(*args: Any, **kwargs: Any) -> torch.Tensor:
        # Detectron2's MViT reads its drop-path rates with .item(), which meta tensors refuse
        return linspace(*args, **{**kwargs, "device": "cpu"})

    with torch.device("meta"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "linspace", cpu_linspace)
        return instantiate(model_cfg)


def shapes(model: nn.Module) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def effective_kwargs(cls: type, configured: Dict[str, Any]) -> Dict[str, Any]:
    """The constructor arguments a config gives ``cls``: configured values over its defaults."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    out = {k: p.default for k, p in params.items() if k != "self"}
    out.update({k: v for k, v in configured.items() if k != "_target_"})
    return {k: plain(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def loaded() -> Dict[str, Any]:
    return {name: get_config(name) for name in NAMES}


# --- Tests ------------------------------------------------------------------------------------


def test_every_published_recipe_is_shipped_and_tested():
    assert sorted(n for n in list_configs() if n.startswith("published/")) == NAMES
    for name in NAMES:  # the tools resolve names, with or without configs/ and .py
        path = get_config_file(name)
        assert path.endswith("configs/" + name)
        assert resolve_config_file(name) == resolve_config_file("configs/" + name[:-3]) == path


@pytest.mark.parametrize("name", NAMES)
def test_data(name, loaded):
    ref, cfg = RECIPES[name], loaded[name]
    train = instantiate(cfg.dataloader.train.mapper)
    assert isinstance(train, DatasetMapper) and train.is_train
    assert describe_augs(train.augmentations.augs) == describe_augs(ref["train_augs"])
    assert train.image_format == "RGB" and train.use_instance_mask
    assert train.recompute_boxes == ref["recompute_boxes"]
    assert cfg.dataloader.train.total_batch_size == 64
    assert cfg.dataloader.train.num_workers == 4
    test = instantiate(cfg.dataloader.test.mapper)
    assert not test.is_train and test.image_format == "RGB"
    assert describe_augs(test.augmentations.augs) == describe_augs(ref["test_augs"])
    train_set, test_set = (
        ("lvis_v1_train", "lvis_v1_val") if ref["lvis"] else ("coco_2017_train", "coco_2017_val")
    )
    assert cfg.dataloader.train.dataset.names == train_set
    assert cfg.dataloader.test.dataset.names == test_set
    assert cfg.dataloader.test.dataset.filter_empty is False
    evaluator = cfg.dataloader.evaluator
    if ref["lvis"]:
        assert evaluator._target_ is LVISEvaluator and evaluator.max_dets_per_image == 300
        sampler = cfg.dataloader.train.sampler
        assert sampler._target_ is RepeatFactorTrainingSampler
        factors = sampler.repeat_factors
        assert (
            factors._target_ == RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
        )
        assert factors.repeat_thresh == 0.001
        assert factors._get_node("dataset_dicts")._value() == "${dataloader.train.dataset}"
    else:
        assert evaluator._target_ is COCOEvaluator and "max_dets_per_image" not in evaluator
        assert cfg.dataloader.train.get("sampler") is None
    assert evaluator.dataset_name == test_set


def reference_schedule(ref: Dict[str, Any]) -> WarmupParamScheduler:
    kwargs = dict(values=[1.0, 0.1, 0.01], milestones=ref["milestones"])
    if ref["num_updates"] is not None:
        kwargs["num_updates"] = ref["num_updates"]
    return WarmupParamScheduler(
        MultiStepParamScheduler(**kwargs),
        warmup_factor=0.001,
        warmup_length=ref["warmup_length"],
    )


@pytest.mark.parametrize("name", NAMES)
def test_schedule_and_train_settings(name, loaded):
    ref, cfg = RECIPES[name], loaded[name]
    assert cfg.train.max_iter == ref["max_iter"]
    ours, expected = instantiate(cfg.lr_multiplier), reference_schedule(ref)
    assert vars(ours._schedulers[1]) == vars(expected._schedulers[1])  # milestones, num_updates
    assert ours._lengths == pytest.approx(expected._lengths, rel=1e-12)
    max_iter = ref["max_iter"]
    steps = {0, 1, 60, 124, 125, 126, 249, 250, 251, max_iter - 1}
    steps |= {m + d for m in ref["milestones"] for d in (-1, 0, 1) if m + d < max_iter}
    for step in sorted(steps):
        assert ours(step / max_iter) == pytest.approx(expected(step / max_iter), rel=1e-9), step
    assert cfg.train.init_checkpoint == WEIGHTS.format(ref["weights"])
    assert cfg.train.amp.enabled is True and cfg.train.ddp.fp16_compression is True
    assert (
        cfg.train.ddp.broadcast_buffers is False and cfg.train.ddp.find_unused_parameters is False
    )
    assert cfg.train.eval_period == ref["eval_period"]
    assert cfg.train.checkpointer.period == 5000 and cfg.train.log_period == 20


def test_vitdet_l_warmup_is_that_of_the_100_epoch_run():
    """The published L 50-epoch COCO file halves the run but not its warmup fraction."""
    cfg = get_config("published/cascade_mask_rcnn_mvitv2_l_in21k_50ep.py")
    assert cfg.lr_multiplier.warmup_length * 184375 == pytest.approx(250)
    sched = instantiate(cfg.lr_multiplier)
    assert sched(124 / 92187) < 1.0 and sched(126 / 92187) == 1.0


def reference_param_settings(ref: Dict[str, Any], model: nn.Module) -> Dict[str, tuple]:
    """(lr, weight decay) of every parameter under the reference optimizer
    (model-zoo ``optim.py`` AdamW with the recipe's lr and overrides)."""
    groups = get_default_optimizer_params(
        model, base_lr=ref["lr"], weight_decay_norm=0.0, overrides=ref["overrides"]
    )
    optimizer = torch.optim.AdamW(groups, lr=ref["lr"], betas=(0.9, 0.999), weight_decay=0.1)
    return param_settings(optimizer, model)


def param_settings(optimizer: torch.optim.Optimizer, model: nn.Module) -> Dict[str, tuple]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (group["lr"], group["weight_decay"], tuple(group["betas"]))
        for group in optimizer.param_groups
        for p in group["params"]
    }


@pytest.mark.parametrize("name", NAMES)
def test_model_and_optimizer_equal_the_reference(name, loaded):
    ref, cfg = RECIPES[name], loaded[name]
    ours_cfg = cfg.model
    expected_cfg = reference_model(ref)
    # the MViT: every constructor argument, ours against Detectron2's
    ours_mvit = effective_kwargs(MViT, cfg.model.backbone.bottom_up)
    ref_mvit = effective_kwargs(Detectron2MViT, expected_cfg.backbone.bottom_up)
    assert {k: ours_mvit[k] for k in ref_mvit} == ref_mvit
    assert ours_mvit["attention_mode"] == "hybrid"  # Detectron2's MViT attention
    assert list(cfg.model.pixel_mean) == [123.675, 116.28, 103.53]
    assert list(cfg.model.pixel_std) == [58.395, 57.12, 57.375]
    # Detectron2's activation checkpointing needs fairscale, whose wrapper keeps every module
    # and name: the reference is built without it (the argument itself was compared above).
    expected_cfg.backbone.bottom_up.use_act_checkpoint = False
    ours, expected = build(ours_cfg), build(expected_cfg)
    # every module outside the MViT (FPN, RPN, heads, matchers, norms) with its settings
    assert describe_modules(ours, "backbone.bottom_up") == describe_modules(
        expected, "backbone.bottom_up"
    )
    assert ours.backbone.padding_constraints == expected.backbone.padding_constraints
    # every parameter and buffer shape, hence the published model's parameter count
    assert shapes(ours) == shapes(expected)
    assert num_params(ours) == num_params(expected)
    if ref["published_params_m"] is not None:  # the MViTv2 README's "#params", rounded
        assert round(num_params(ours) / 1e6) == ref["published_params_m"]
    # the optimizer: type, settings, and the lr / weight decay of every parameter
    assert cfg.optimizer._target_ is torch.optim.AdamW
    assert cfg.optimizer.lr == ref["lr"] and cfg.optimizer.weight_decay == 0.1
    assert tuple(cfg.optimizer.betas) == (0.9, 0.999)
    assert cfg.optimizer.params.weight_decay_norm == 0.0
    assert dict(cfg.optimizer.params.overrides) == ref["overrides"]
    cfg.optimizer.params.model = ours
    assert param_settings(instantiate(cfg.optimizer), ours) == reference_param_settings(
        ref, expected
    )


def test_published_l_count_differs_from_the_readme_figure():
    """The MViTv2 README gives 270M for the L model; the recipe's structure (ours and
    Detectron2's alike) has 265.1 M parameters. The table states the counted figure."""
    ours = build(get_config("published/cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py").model)
    assert round(num_params(ours) / 1e5) == 2651


def test_lvis_fed_loss_weights_are_image_counts_to_the_half():
    cfg = get_config("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py")
    counts = [c["image_count"] for c in sorted(LVIS_CATEGORY_IMAGE_COUNT, key=lambda c: c["id"])]
    expected = torch.tensor(counts, dtype=torch.float64).sqrt()
    for predictor in cfg.model.roi_heads.box_predictors:
        weights = instantiate(predictor.get_fed_loss_cls_weights)()
        assert weights.shape == (1203,)
        torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=0)


# --- Small runs of each recipe family -----------------------------------------------------------


def _record(image_size=(200, 300)) -> Dict[str, Any]:
    """One image with two polygon instances, as a dataset record."""
    from detectron2.structures import BoxMode

    h, w = image_size
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    square = [40.0, 40.0, 120.0, 40.0, 120.0, 120.0, 40.0, 120.0]
    triangle = [150.0, 60.0, 260.0, 60.0, 200.0, 170.0]
    annotations = [
        dict(bbox=[40, 40, 80, 80], bbox_mode=BoxMode.XYWH_ABS, category_id=0,
             segmentation=[square], iscrowd=0),
        dict(bbox=[150, 60, 110, 110], bbox_mode=BoxMode.XYWH_ABS, category_id=1,
             segmentation=[triangle], iscrowd=0),
    ]  # fmt: skip
    return dict(image=image, height=h, width=w, image_id=0, annotations=annotations)


def _mapped(name: str, seed: int) -> Dict[str, Any]:
    import copy

    mapper = instantiate(get_config(name).dataloader.train.mapper)
    record = _record()
    image = record.pop("image")
    mapper_input = dict(record, file_name="unused.jpg")
    np.random.seed(seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("detectron2.data.detection_utils.read_image", lambda *a, **k: image.copy())
        return mapper(copy.deepcopy(mapper_input))


@pytest.mark.parametrize(
    "name,check",
    [
        # multi-scale: shorter side one of 480-800 (step 32), longer at most 1333, no padding
        ("published/cascade_mask_rcnn_mvitv2_t_3x.py",
         lambda sizes: all(min(s) in range(480, 801, 32) and max(s) <= 1333 for s in sizes)),
        # MViTv2 LSJ: always a padded 1024 x 1024 crop
        ("published/cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x.py",
         lambda sizes: all(s == (1024, 1024) for s in sizes)),
        # ViTDet LSJ: cropped to at most 1024 per side, never padded (images that the random
        # scale leaves smaller stay smaller)
        ("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py",
         lambda sizes: all(max(s) <= 1024 for s in sizes) and any(max(s) < 1024 for s in sizes)),
    ],
)  # fmt: skip
def test_train_mapper_runs_with_masks(name: str, check: Callable[[List[tuple]], bool]) -> None:
    sizes = []
    for seed in range(6):
        out = _mapped(name, seed)
        size = tuple(out["image"].shape[1:])
        assert out["instances"].image_size == size and len(out["instances"]) > 0
        sizes.append(size)
    assert check(sizes), sizes


def test_lvis_recipe_trains_one_step_at_a_small_size():
    """The LVIS ViTDet recipe (square padding, LayerNorm heads, 2-conv RPN, sigmoid + federated
    loss over 1203 classes) with a tiny MViT: one forward/backward with finite losses."""
    cfg = get_config("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py")
    cfg.model.backbone.bottom_up.update(
        embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
        drop_path_rate=0.0, use_act_checkpoint=False,
    )  # fmt: skip
    cfg.model.backbone.square_pad = 128
    cfg.model.roi_heads.batch_size_per_image = 16
    cfg.model.proposal_generator.update(pre_nms_topk=(200, 200), post_nms_topk=(32, 32))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    assert model.roi_heads.box_predictor[0].use_fed_loss
    image = torch.randint(0, 255, (3, 96, 120), dtype=torch.uint8)
    instances = Instances((96, 120))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0], [50.0, 30.0, 110.0, 90.0]]))
    instances.gt_classes = torch.tensor([3, 1000])
    from detectron2.structures import BitMasks

    masks = torch.zeros(2, 96, 120, dtype=torch.bool)
    masks[0, 10:50, 10:60] = True
    masks[1, 30:90, 50:110] = True
    instances.gt_masks = BitMasks(masks)
    with EventStorage():
        losses = model([{"image": image, "instances": instances, "height": 96, "width": 120}])
    assert {"loss_cls_stage0", "loss_mask", "loss_rpn_cls"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # padded to the square: the FPN saw a 128 x 128 input
    assert model.backbone.padding_constraints["square_size"] == 128


# --- LVIS datasets in the tools -------------------------------------------------------------

LVIS_NAME = "published_lvis_shapes_val"
LVIS_CONFIG = "published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py"


@pytest.fixture(scope="module")
def lvis_shapes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Three generated shapes images with an LVIS-format annotation file (coco_url, category ids
    1..3 with frequency and image counts, no iscrowd), registered as ``LVIS_NAME``."""
    import json

    from mvit_det.data import generate_shapes_dataset
    from mvit_det.data.lvis import register_lvis_dataset

    root = tmp_path_factory.mktemp("lvis_shapes")
    generate_shapes_dataset(str(root), {"val": 3})
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    for image in data["images"]:
        image.update(
            coco_url=f"http://images.example/val/{image['file_name']}",
            neg_category_ids=[],
            not_exhaustive_category_ids=[],
        )
    for category in data["categories"]:
        images = {a["image_id"] for a in data["annotations"] if a["category_id"] == category["id"]}
        category.update(frequency="f", image_count=len(images), synonyms=[category["name"]])
    for annotation in data["annotations"]:
        annotation.pop("iscrowd")
    json_file = root / "lvis_val.json"
    json_file.write_text(json.dumps(data))
    register_lvis_dataset(LVIS_NAME, str(json_file), str(root))
    return {"json": str(json_file), "root": str(root), "data": data}


LVIS_TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
    "model.backbone.bottom_up.drop_path_rate=0.0",
    "model.backbone.square_pad=256",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.box_predictors.2.test_topk_per_image=10",  # the last stage's detections
    "model.proposal_generator.pre_nms_topk=[200,200]",
    "model.proposal_generator.post_nms_topk=[32,32]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=256",
    "dataloader.test.mapper.augmentations.0.max_size=256",
    f"dataloader.train.dataset.names={LVIS_NAME}",
    f"dataloader.test.dataset.names={LVIS_NAME}",
]


def tiny_lvis_config():
    """The LVIS recipe with a 4-block MViT at 256 px on the generated LVIS-format set."""
    from mvit_det.engine import apply_overrides_checked

    torch.manual_seed(0)
    return apply_overrides_checked(get_config(LVIS_CONFIG), LVIS_TINY)


def _lvis_api_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the lvis package is installed, make it look absent."""
    import importlib.util

    from mvit_det.data import lvis as lvis_module

    if importlib.util.find_spec("lvis") is not None:
        monkeypatch.setattr(lvis_module, "lvis_api_available", lambda: False)


def test_register_lvis_dataset_metadata(lvis_shapes):
    from detectron2.data import MetadataCatalog

    from mvit_det.data.lvis import is_lvis_dataset

    meta = MetadataCatalog.get(LVIS_NAME)
    assert is_lvis_dataset(LVIS_NAME) and not is_lvis_dataset("coco_2017_val")
    assert is_lvis_dataset("lvis_v1_val")  # Detectron2's builtin LVIS splits
    assert meta.thing_classes == ["circle", "triangle", "square"]
    counts = {c["id"]: c["image_count"] for c in lvis_shapes["data"]["categories"]}
    assert meta.class_image_count == [{"id": i, "image_count": counts[i]} for i in (1, 2, 3)]
    assert meta.evaluator_type == "lvis" and meta.json_file == lvis_shapes["json"]


def test_register_lvis_dataset_refuses_what_detectron2_cannot_read(tmp_path, lvis_shapes):
    import json

    from mvit_det.data import InvalidDatasetError
    from mvit_det.data.lvis import register_lvis_dataset

    data = json.loads(json.dumps(lvis_shapes["data"]))
    data["categories"][2]["id"] = 7  # ids must be 1..N
    bad = tmp_path / "ids.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InvalidDatasetError, match=r"category ids .* must be 1\.\.3"):
        register_lvis_dataset("published_bad_ids", str(bad), lvis_shapes["root"])
    data = json.loads(json.dumps(lvis_shapes["data"]))
    del data["images"][1]["coco_url"]
    bad = tmp_path / "url.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InvalidDatasetError, match="coco_url"):
        register_lvis_dataset("published_bad_url", str(bad), lvis_shapes["root"])


def test_lvis_dataset_without_the_lvis_package_is_an_error_naming_it(
    lvis_shapes, tmp_path, monkeypatch, capsys
):
    from mvit_det.data import prepare_datasets
    from mvit_det.data.lvis import LVISNotInstalledError
    from mvit_det.engine.train_net import UsageError, build_argument_parser
    from mvit_det.engine.train_net import main as train_main
    from mvit_det.tools import evaluate

    _lvis_api_missing(monkeypatch)
    with pytest.raises(LVISNotInstalledError, match=r"'lvis' package.*pip install lvis"):
        prepare_datasets([LVIS_NAME])
    prepare_datasets(["shapes_val"])  # other datasets need nothing more
    # the evaluation tool: exit status 2, one error line that names the package
    weights = tmp_path / "w.pth"
    torch.save({"model": instantiate(tiny_lvis_config().model).state_dict()}, weights)
    argv = ["--register-lvis", "published_lvis_again", lvis_shapes["json"], lvis_shapes["root"],
            "--dataset", "published_lvis_again", "--device", "cpu",
            "--output", str(tmp_path / "e.json"),
            "--model", LVIS_CONFIG, str(weights), *LVIS_TINY]  # fmt: skip
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "'lvis' package" in err and "published_lvis_again" in err
    # the training tool: a usage error before any model is built
    args = build_argument_parser().parse_args(
        ["--config-file", get_config_file(LVIS_CONFIG), "--eval-only",
         f"train.output_dir={tmp_path / 'out'}", *LVIS_TINY]
    )  # fmt: skip
    with pytest.raises(UsageError, match=rf"'{LVIS_NAME}' is in LVIS format.*'lvis' package"):
        train_main(args)


def test_lvis_evaluation_in_the_tools(lvis_shapes, tmp_path):
    """With the LVIS API: tools/evaluate.py and the training tool's --eval-only evaluate an LVIS
    dataset with LVISEvaluator (its results have the rare/common/frequent APs), and perfect
    detections score 100."""
    pytest.importorskip("lvis")
    import json

    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode
    from detectron2.structures.masks import polygons_to_bitmask

    from mvit_det.engine.train_net import build_argument_parser
    from mvit_det.engine.train_net import main as train_main
    from mvit_det.tools import evaluate
    from mvit_det.tools.loading import LoadedModel

    weights = tmp_path / "w.pth"
    torch.save({"model": instantiate(tiny_lvis_config().model).state_dict()}, weights)
    output = tmp_path / "e.json"
    argv = ["--dataset", LVIS_NAME, "--device", "cpu", "--output", str(output),
            "--model", LVIS_CONFIG, str(weights)] + LVIS_TINY  # fmt: skip
    assert evaluate.main(argv) == 0
    (row,) = json.loads(output.read_text())
    assert row["images"] == 3 and {"APr", "APc", "APf"} <= set(row["metrics"]["bbox"])
    args = build_argument_parser().parse_args(
        ["--config-file", get_config_file(LVIS_CONFIG), "--eval-only",
         f"train.init_checkpoint={weights}",
         f"train.output_dir={tmp_path / 'out'}"] + LVIS_TINY
    )  # fmt: skip
    results = train_main(args)
    assert {"APr", "APc", "APf"} <= set(results["segm"])

    class Oracle(nn.Module):
        """Returns the ground truth of each image as detections with score 1."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))
            self.truth = {r["image_id"]: r for r in DatasetCatalog.get(LVIS_NAME)}

        def forward(self, inputs: List[Dict[str, Any]]) -> List[Dict[str, Instances]]:
            outputs = []
            for item in inputs:
                record = self.truth[item["image_id"]]
                size = (record["height"], record["width"])
                annotations = record["annotations"]
                instances = Instances(size)
                boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                         for a in annotations]  # fmt: skip
                instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
                instances.scores = torch.ones(len(annotations))
                instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
                masks = [polygons_to_bitmask(a["segmentation"], *size) for a in annotations]
                instances.pred_masks = torch.from_numpy(np.stack(masks))
                outputs.append({"instances": instances})
            return outputs

    oracle = LoadedModel(Oracle(), [], "RGB", LVIS_NAME, LVIS_CONFIG)
    result = evaluate.evaluate_model(oracle, LVIS_NAME, str(tmp_path / "oracle"), warmup=0)
    assert result["metrics"]["bbox"]["AP"] == pytest.approx(100.0)
    assert result["metrics"]["segm"]["AP"] == pytest.approx(100.0)


# --- The table of README.md and docs/recipes.md -----------------------------------------------

# Published box / mask AP, from the MViTv2 README (COCO) and the ViTDet README (COCO, LVIS).
PUBLISHED_AP = {
    "published/mask_rcnn_mvitv2_t_3x.py": "48.3 / 43.8",
    "published/cascade_mask_rcnn_mvitv2_t_3x.py": "52.2 / 45.0",
    "published/cascade_mask_rcnn_mvitv2_s_3x.py": "53.2 / 46.0",
    "published/cascade_mask_rcnn_mvitv2_b_3x.py": "54.1 / 46.7",
    "published/cascade_mask_rcnn_mvitv2_b_in21k_3x.py": "54.9 / 47.4",
    "published/cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py": "55.8 / 48.3",
    "published/cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x.py": "56.1 / 48.5",
    "published/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py": "55.6 / 48.1",
    "published/cascade_mask_rcnn_mvitv2_l_in21k_50ep.py": "55.7 / 48.3",
    "published/cascade_mask_rcnn_mvitv2_h_in21k_36ep.py": "55.9 / 48.3",
    "published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py": "46.3 / 42.0",
    "published/LVIS/cascade_mask_rcnn_mvitv2_l_in21k_50ep.py": "49.4 / 44.2",
    "published/LVIS/cascade_mask_rcnn_mvitv2_h_in21k_50ep.py": "49.5 / 44.1",
}


def _table(path) -> Dict[str, List[str]]:
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_recipe_table_ap_only_beside_its_recipe_and_counted_parameters():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    table = _table(repo / "docs" / "recipes.md")
    assert _table(repo / "README.md") == table  # one table, the same in both
    lsj = [f"{m}_mvitv2_{s}.py" for m in ("mask_rcnn", "cascade_mask_rcnn") for s in "tsblh"]
    assert sorted(table) == sorted(lsj + NAMES)
    for name, (recipe_cell, schedule, ap, params) in table.items():
        assert ap == PUBLISHED_AP.get(name, "-"), name
        expected = RECIPES.get(name)
        if expected is None:
            assert recipe_cell.endswith(", LSJ") and schedule == "36 ep", name
        else:
            kind = "ViTDet" if expected["vitdet"] else (
                "LSJ" if expected["recompute_boxes"] else "multi-scale")  # fmt: skip
            assert kind in recipe_cell and ("LVIS" in recipe_cell) == expected["lvis"], name
            # the references' names: 3x = 36 epochs (67,500 iterations are 36.6 of 118k images)
            epochs = {67500: 36, 92187: 50, 184375: 100, 78125: 50, 156250: 100}
            assert schedule == f"{epochs[expected['max_iter']]} ep", name
        count = num_params(build(get_config(name).model))
        assert params == f"{count / 1e6:.2f}", name


def test_vitdet_published_weights_load_with_nothing_missing_or_left_over(tmp_path):
    """A file with exactly the keys of Detectron2's LVIS ViTDet model (LayerNorm FPN and heads,
    federated-loss buffers), here at a tiny MViT size, loads fully into the config's model."""
    import pickle

    from mvit_det.checkpoint import MViTCheckpointer

    tiny = dict(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3))
    ref = dict(RECIPES["published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py"])
    ref["mvit"] = dict(ref["mvit"], **tiny)
    torch.manual_seed(0)
    reference = instantiate(reference_model(ref))
    weights = {k: v.numpy() + 1.0 for k, v in reference.state_dict().items()}  # not an init
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    cfg = get_config("published/LVIS/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py")
    cfg.model.backbone.bottom_up.update(tiny)
    model = instantiate(cfg.model)
    checkpointer = MViTCheckpointer(model)
    checkpointer.load(str(tmp_path / "model_final.pkl"))
    report = checkpointer.last_report
    assert report.missing == [] and report.new == [] and report.dropped == []
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key].cpu(), torch.from_numpy(value)), key
