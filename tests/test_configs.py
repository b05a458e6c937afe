"""Every shipped config: recipe facts, and one training step + one inference at a small size."""

import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.utils.events import EventStorage

from mvit_det import MVIT_PRESETS, MViT
from mvit_det.data import lsj_train_augmentations
from mvit_det.engine import apply_overrides_checked
from mvit_det.model_zoo import get_config, list_configs

from helpers import REPO

SIZES = ("t", "s", "b", "l", "h")
RECIPES = [f"{m}_mvitv2_{s}.py" for m in ("mask_rcnn", "cascade_mask_rcnn") for s in SIZES]
TINY_BACKBONE = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.num_heads=1",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
]
WEIGHTS = {"t": "T_in1k", "s": "S_in1k", "b": "B_in1k", "l": "L_in21k", "h": "H_in21k"}
RETINANETS = [f"retinanet_mvitv2_{s}.py" for s in ("t", "s", "b")] + ["retinanet_mvitv2_b_sfp.py"]
SHIPPED = RECIPES + RETINANETS + ["demo/mask_rcnn_mvitv2_shapes.py"]


def test_all_configs_are_listed():
    shipped = {n for n in list_configs() if not n.startswith(("projects/", "published/"))}
    assert set(SHIPPED) == shipped


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_facts(name):
    cfg = get_config(name)
    size = name[-4]
    preset = MVIT_PRESETS[size.upper()]
    bottom_up = cfg.model.backbone.bottom_up
    assert bottom_up._target_ is MViT
    for key, value in preset.items():
        configured = tuple(bottom_up[key]) if isinstance(value, tuple) else bottom_up[key]
        assert configured == value, key
    assert bottom_up.get("use_act_checkpoint", False) == (size == "h")
    assert cfg.model.backbone.out_channels == 256
    assert list(cfg.model.backbone.in_features) == ["scale2", "scale3", "scale4", "scale5"]
    # RPN convs as the published models: one for Mask R-CNN, two for Cascade Mask R-CNN.
    rpn_convs = [-1, -1] if name.startswith("cascade") else [-1]
    assert list(cfg.model.proposal_generator.head.get("conv_dims", [-1])) == rpn_convs
    assert cfg.model.input_format == "RGB"
    assert list(cfg.model.pixel_mean) == [123.675, 116.28, 103.53]
    # LSJ at 1024 with box recomputation, 64 images per iteration.
    mapper = cfg.dataloader.train.mapper
    augs = [a._target_ for a in mapper.augmentations]
    assert augs == [T.RandomFlip, T.ResizeScale, T.FixedSizeCrop]
    assert (mapper.augmentations[1].min_scale, mapper.augmentations[1].max_scale) == (0.1, 2.0)
    assert tuple(mapper.augmentations[2].crop_size) == (1024, 1024)
    assert mapper.recompute_boxes and mapper.use_instance_mask
    assert cfg.dataloader.train.total_batch_size == 64
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
    # 3x: 36 epochs of 118,287 images at 64 per iteration, 250-iteration warmup, step decay.
    assert cfg.train.max_iter == 67500
    assert 35.5 < cfg.train.max_iter * 64 / 118287 < 37
    sched = instantiate(cfg.lr_multiplier)
    assert math.isclose(cfg.lr_multiplier.warmup_length * cfg.train.max_iter, 250)
    assert sched(249 / cfg.train.max_iter) < 1.0 and sched(251 / cfg.train.max_iter) == 1.0
    assert list(cfg.lr_multiplier.scheduler.milestones) == [52500, 62500]
    assert sched(0.5) == 1.0 and math.isclose(sched(0.9999), 0.01)
    # AdamW, no decay on norms / pos_embed / rel-pos, layer decay off, AMP + fp16 DDP comm.
    assert cfg.optimizer._target_ is torch.optim.AdamW
    assert cfg.optimizer.lr == (1e-4 if size in "lh" else 1.6e-4)
    assert cfg.optimizer.weight_decay == 0.1 and tuple(cfg.optimizer.betas) == (0.9, 0.999)
    assert cfg.optimizer.params.weight_decay_norm == 0.0
    for key in ("pos_embed", "rel_pos_h", "rel_pos_w"):
        assert cfg.optimizer.params.overrides[key] == {"weight_decay": 0.0}
    assert cfg.optimizer.params.lr_factor_func.decay_rate == 1.0
    assert cfg.train.amp.enabled and cfg.train.ddp.fp16_compression
    assert cfg.train.init_checkpoint == (
        f"detectron2://ImageNetPretrained/mvitv2/MViTv2_{WEIGHTS[size]}.pyth"
    )
    if name.startswith("cascade"):
        rh = cfg.model.roi_heads
        assert rh._target_ is CascadeROIHeads
        assert [m.thresholds[0] for m in rh.proposal_matchers] == [0.5, 0.6, 0.7]
        assert [tuple(p.box2box_transform.weights) for p in rh.box_predictors] == [
            (10, 10, 5, 5),
            (20, 20, 10, 10),
            (30, 30, 15, 15),
        ]
        assert all(p.cls_agnostic_bbox_reg for p in rh.box_predictors)
        assert all(
            list(h.conv_dims) == [256] * 4 and list(h.fc_dims) == [1024] for h in rh.box_heads
        )
        assert rh.mask_head.conv_norm is rh.box_heads[0].conv_norm is not None


def _small_inputs(cfg, image_size: int = 128):
    """Two LSJ-augmented training images of the synthetic dataset at ``image_size``."""
    cfg.dataloader.train.mapper.augmentations = lsj_train_augmentations(image_size, 0.8, 1.2)
    mapper = instantiate(cfg.dataloader.train.mapper)
    records = DatasetCatalog.get("shapes_train")
    torch.manual_seed(0)
    return [mapper(r) for r in records[:2]]


@pytest.mark.parametrize("name", RECIPES + ["demo/mask_rcnn_mvitv2_shapes.py"])
def test_train_step_and_inference(name, shapes_datasets_root):
    cfg = get_config(name)
    apply_overrides_checked(
        cfg,
        TINY_BACKBONE
        + [
            "model.roi_heads.num_classes=3",
            "model.roi_heads.batch_size_per_image=16",
            "model.proposal_generator.post_nms_topk=[64,16]",
        ],
    )
    roi_heads = cfg.model.roi_heads
    for predictor in roi_heads.get("box_predictors") or [roi_heads.box_predictor]:
        predictor.test_topk_per_image = 5  # keeps the untrained mask head cheap at inference
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert isinstance(model.backbone.bottom_up, MViT) and len(model.backbone.bottom_up.blocks) == 4
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay[id(named["backbone.bottom_up.blocks.0.attn.rel_pos_h"])] == 0.0
    assert decay[id(named["backbone.bottom_up.scale2_norm.weight"])] == 0.0
    assert decay[id(named["backbone.bottom_up.blocks.0.attn.qkv.weight"])] == (
        cfg.optimizer.weight_decay
    )
    assert cfg.optimizer.weight_decay > 0

    inputs = _small_inputs(cfg)
    model.train()
    with EventStorage():
        losses = model(inputs)
        expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"}
        if name.startswith("cascade"):
            expected |= {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
        else:
            expected |= {"loss_cls", "loss_box_reg"}
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        for pname in (
            "backbone.bottom_up.patch_embed.proj.weight",
            "backbone.bottom_up.blocks.3.mlp.fc2.weight",
        ):
            assert named[pname].grad is not None and named[pname].grad.abs().sum() > 0
        before = named["backbone.bottom_up.patch_embed.proj.weight"].detach().clone()
        optimizer.step()
        assert not torch.equal(before, named["backbone.bottom_up.patch_embed.proj.weight"])

    model.eval()
    with torch.no_grad():
        image = inputs[0]["image"][:, :96, :112]
        out = model([{"image": image, "height": 96, "width": 112}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 112)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(inst.get_fields())
    if len(inst):
        assert tuple(inst.pred_masks.shape[1:]) == (96, 112)


def test_layer_decay_switch():
    cfg = get_config("mask_rcnn_mvitv2_t.py")
    apply_overrides_checked(cfg, ["optimizer.params.lr_factor_func.decay_rate=0.5"])
    decay = instantiate(cfg.optimizer.params.lr_factor_func)
    depth = 10  # MViTv2-T, last_block_indexes (0, 2, 7, 9)
    assert decay("backbone.bottom_up.patch_embed.proj.weight") == 0.5 ** (depth + 1)
    assert decay("backbone.bottom_up.blocks.0.attn.qkv.weight") == 0.5**depth
    assert decay("backbone.bottom_up.blocks.9.mlp.fc1.bias") == 0.5
    # Stage-aware: a stage's output norm goes with the stage's last block.
    assert decay("backbone.bottom_up.scale3_norm.weight") == decay(
        "backbone.bottom_up.blocks.2.norm1.weight"
    )
    assert decay("backbone.bottom_up.scale5_norm.bias") == 0.5
    assert (
        decay("backbone.fpn_lateral2.weight")
        == decay("roi_heads.box_predictor.cls_score.weight")
        == 1.0
    )


def test_get_config_from_a_non_editable_install(tmp_path):
    """Configs are package data: a plain (non-editable) install serves them by name."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), REPO],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert not (target / "mvit_det" / "model_zoo" / "configs").is_symlink()
    code = (
        "import mvit_det.model_zoo as z, mvit_det, sys;"
        "assert mvit_det.__file__.startswith(sys.argv[1]), mvit_det.__file__;"
        "c = z.get_config('mask_rcnn_mvitv2_b.py'); print(c.model.backbone.bottom_up.depth);"
        "print(z.get_config('demo/mask_rcnn_mvitv2_shapes.py').dataloader.test.dataset.names);"
        "print(z.get_config('projects/ViL/configs/COCO/mask_rcnn_vil_b_3x.py').train.max_iter);"
        "print(len(z.list_configs()))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.split()
    # the installed package serves every config of the source tree, the projects' included
    assert out == ["24", "shapes_val", "270000", str(len(list_configs()))]
    yacs = target / "mvit_det" / "model_zoo" / "configs" / "yacs"
    vil = [
        f"{m}_vil_{s}_{e}.yaml"
        for m in ("mask_rcnn", "retinanet")
        for s in "tsmb"
        for e in ("1x", "3x")
    ]
    assert {p.name for p in yacs.glob("*.yaml")} == {
        "Base-Mask-RCNN-MViTv2.yaml",
        "Base-Cascade-Mask-RCNN-MViTv2.yaml",
        "Base-Mask-RCNN-ViL.yaml",
        "Base-RetinaNet-ViL.yaml",
    } | {n.replace(".py", ".yaml") for n in RECIPES} | set(vil)
    assert (yacs / "demo" / "mask_rcnn_mvitv2_shapes.yaml").is_file()
    assert (yacs / "demo" / "mask_rcnn_vil_shapes.yaml").is_file()


@pytest.mark.parametrize("name", RETINANETS)
def test_retinanet_recipe_and_train_step(name, shapes_datasets_root):
    sfp = name.endswith("_sfp.py")
    cfg = get_config(name)
    mvit = "model.backbone.net" if sfp else "model.backbone.bottom_up"
    bottom_up = cfg.model.backbone.net if sfp else cfg.model.backbone.bottom_up
    size = "B" if sfp else name[-4].upper()
    assert bottom_up._target_ is MViT and bottom_up.depth == MVIT_PRESETS[size]["depth"]
    assert cfg.train.init_checkpoint.endswith(f"MViTv2_{size}_in1k.pyth")
    assert list(cfg.model.head_in_features) == ["p3", "p4", "p5", "p6", "p7"]
    assert list(cfg.model.anchor_generator.strides) == [8, 16, 32, 64, 128]
    assert cfg.model.input_format == "RGB" and cfg.optimizer.lr == 1.6e-4
    assert not cfg.dataloader.train.mapper.use_instance_mask
    assert tuple(cfg.dataloader.train.mapper.augmentations[2].crop_size) == (1024, 1024)
    overrides = [f"{mvit}.{o.split('.', 3)[3]}" for o in TINY_BACKBONE]
    overrides += ["model.num_classes=3", "model.head.conv_dims=[32]"]
    overrides += ["optimizer.params.lr_factor_func.decay_rate=0.5"]
    if sfp:
        overrides += ["model.backbone.square_pad=0"]  # 128 px images, not 1024 squares
    apply_overrides_checked(cfg, overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    outputs = model.backbone.output_shape()
    assert {k: v.stride for k, v in outputs.items()} == {f"p{i}": 2**i for i in range(3, 8)}
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    prefix = "backbone.net." if sfp else "backbone.bottom_up."
    # layer decay finds the MViT blocks wherever the pyramid keeps them
    assert lr[id(named[prefix + "blocks.3.mlp.fc1.weight"])] == pytest.approx(0.5 * 1.6e-4)
    assert lr[id(named[prefix + "blocks.0.mlp.fc1.weight"])] == pytest.approx(0.5**4 * 1.6e-4)

    inputs = _small_inputs(cfg)
    model.train()
    with EventStorage():
        losses = model(inputs)
        assert set(losses) == {"loss_cls", "loss_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        weight = named[prefix + "patch_embed.proj.weight"]
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        before = weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, weight)
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"][:, :96, :112], "height": 96, "width": 112}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 112)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
