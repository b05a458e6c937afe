"""The ViL project configs: the published recipe, every config stepped at a small size, the
training tool with batch scaling and checkpoints, full-model gradient clipping."""

from __future__ import annotations

import math
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.utils.events import EventStorage

from mvit_det import ViL, vil_preset
from mvit_det.checkpoint import MViTCheckpointer
from mvit_det.data import lsj_train_augmentations
from mvit_det.engine import apply_overrides_checked
from mvit_det.engine.train_net import build_argument_parser, load_config, main
from mvit_det.model_zoo import get_config, list_configs, resolve_config_file
from mvit_det.solver import AdamWFullModelClip, clip_full_model_gradients

from helpers import REPO

ROOT = "projects/ViL/configs/"
SIZES = ("t", "s", "m", "b")
RECIPES = [
    f"{ROOT}COCO/{det}_vil_{size}_{sched}.py"
    for det in ("mask_rcnn", "retinanet")
    for size in SIZES
    for sched in ("1x", "3x")
]
DEMO = ROOT + "demo/mask_rcnn_vil_shapes.py"
# Drop path rates of the published recipes: (Mask R-CNN 1x, 3x, RetinaNet 1x, 3x).
DROP_PATH = {
    "t": (0.05, 0.1, 0.05, 0.1),
    "s": (0.2, 0.2, 0.1, 0.2),
    "m": (0.2, 0.3, 0.2, 0.3),
    "b": (0.3, 0.3, 0.3, 0.3),
}
TINY_BACKBONE = [
    "model.backbone.bottom_up.embed_dims=[16,24,32,48]",
    "model.backbone.bottom_up.depths=[1,1,1,1]",
    "model.backbone.bottom_up.num_heads=[1,2,2,3]",
]


def test_project_configs_are_listed_and_resolved():
    assert set(RECIPES) | {DEMO} == {n for n in list_configs() if n.startswith(ROOT)}
    path = resolve_config_file(ROOT + "COCO/mask_rcnn_vil_s_1x")  # ".py" may be left out
    assert os.path.samefile(path, os.path.join(REPO, ROOT, "COCO", "mask_rcnn_vil_s_1x.py"))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_facts(name):
    cfg = get_config(name)
    det, rest = os.path.basename(name)[: -len(".py")].split("_vil_")
    size, sched = rest.split("_")
    retina = det == "retinanet"
    bottom_up = cfg.model.backbone.bottom_up
    assert bottom_up._target_ is ViL
    dp = DROP_PATH[size][2 * retina + (sched == "3x")]
    for key, value in vil_preset(size, drop_path_rate=dp).items():
        configured = tuple(bottom_up[key]) if isinstance(value, tuple) else bottom_up[key]
        assert configured == value, key
    assert bottom_up.window == 7 and bottom_up.window_mode == "chunk"
    model = cfg.model
    assert model.input_format == "RGB"
    assert list(model.pixel_mean) == [123.675, 116.28, 103.53]
    assert list(model.pixel_std) == [58.395, 57.12, 57.375]
    if retina:
        assert model._target_ is RetinaNet
        assert list(model.backbone.in_features) == ["scale3", "scale4", "scale5"]
        top = model.backbone.top_block
        assert top.in_feature == "scale5" and model.smooth_l1_beta == 0.0
        assert list(model.head_in_features) == ["p3", "p4", "p5", "p6", "p7"]
        assert not cfg.dataloader.train.mapper.use_instance_mask
    else:
        assert model._target_ is GeneralizedRCNN
        assert list(model.backbone.in_features) == ["scale2", "scale3", "scale4", "scale5"]
        assert cfg.dataloader.train.mapper.use_instance_mask
    # data: shortest side 800 (1x) or 640-800 (3x), max 1333, flips; batch 16
    resize, flip = cfg.dataloader.train.mapper.augmentations
    assert resize._target_ is T.ResizeShortestEdge and flip._target_ is T.RandomFlip
    edges = [800] if sched == "1x" else list(range(640, 801, 32))
    assert list(resize.short_edge_length) == edges and resize.max_size == 1333
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == 800
    # optimizer: AdamW 1e-4, weight decay 0.05 everywhere, full-model clipping
    assert cfg.optimizer._target_ is AdamWFullModelClip
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 0.05
    assert cfg.optimizer.max_grad_norm == (1.0 if retina else 0.5)
    assert tuple(cfg.optimizer.betas) == (0.9, 0.999)
    # schedule: 90k / 270k iterations, steps at 2/3 and 8/9, 1000 warmup iterations from 1%
    iters = 90000 if sched == "1x" else 270000
    assert cfg.train.max_iter == iters
    assert list(cfg.lr_multiplier.scheduler.milestones) == [iters * 2 // 3, iters * 8 // 9]
    assert math.isclose(cfg.lr_multiplier.warmup_length * iters, 1000)
    assert cfg.lr_multiplier.warmup_factor == 0.01
    sched_fn = instantiate(cfg.lr_multiplier)
    assert sched_fn(0.5) == 1.0 and math.isclose(sched_fn(0.99), 0.01)
    assert cfg.train.amp.enabled and cfg.train.ddp.find_unused_parameters
    pretrain = {"t": "longtiny1191", "s": "small1281", "m": "deepmedium", "b": "deepbase"}[size]
    assert pretrain in cfg.train.init_checkpoint


def small_inputs(cfg, image_size: int = 128):
    """Two augmented training images of the synthetic dataset."""
    cfg.dataloader.train.mapper.augmentations = lsj_train_augmentations(image_size, 0.8, 1.2)
    cfg.dataloader.train.mapper.recompute_boxes = cfg.dataloader.train.mapper.use_instance_mask
    mapper = instantiate(cfg.dataloader.train.mapper)
    torch.manual_seed(0)
    return [mapper(r) for r in DatasetCatalog.get("shapes_train")[:2]]


@pytest.mark.parametrize("name", RECIPES + [DEMO])
def test_train_step_and_inference(name, shapes_datasets_root):
    cfg = get_config(name)
    retina = "retinanet" in name
    overrides = TINY_BACKBONE + [
        f"model.{'num_classes' if retina else 'roi_heads.num_classes'}=3",
    ]
    if not retina:
        overrides += [
            "model.roi_heads.batch_size_per_image=16",
            "model.proposal_generator.post_nms_topk=[64,16]",
            "model.roi_heads.box_predictor.test_topk_per_image=5",
        ]
    apply_overrides_checked(cfg, overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, ViL) and bottom_up.depths == (1, 1, 1, 1)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, AdamWFullModelClip)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05}  # norms and tables too

    inputs = small_inputs(cfg)
    named = dict(model.named_parameters())
    model.train()
    with EventStorage():
        losses = model(inputs)
        expected = {"loss_cls", "loss_box_reg"}
        expected |= set() if retina else {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"}
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        stem = "backbone.bottom_up.layer1.0.proj.weight"
        assert named[stem].grad is not None and named[stem].grad.abs().sum() > 0
        before = named[stem].detach().clone()
        optimizer.step()
        assert not torch.equal(before, named[stem])

    model.eval()
    with torch.no_grad():
        image = inputs[0]["image"][:, :96, :112]
        out = model([{"image": image, "height": 96, "width": 112}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 112)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())


def test_full_model_gradient_clipping():
    """One norm over all parameters: a step sees the gradients scaled down together."""
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    clip_full_model_gradients(optimizer, max_norm=1.0)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)  # joint norm sqrt(27 + 64)
    optimizer.step()
    scale = 1.0 / math.sqrt(91.0)
    assert torch.allclose(a, torch.full((3,), -3.0 * scale), atol=1e-6)
    assert torch.allclose(b, torch.full((4,), -4.0 * scale), atol=1e-6)
    assert math.isclose(torch.cat([a.grad, b.grad]).norm().item(), 1.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="max_norm=0 must be > 0"):
        clip_full_model_gradients(optimizer, max_norm=0)


def test_auto_scale_keeps_the_recipe_per_image(tmp_path):
    """--auto-scale from the recipe's 8 GPUs x 2 images to 1 GPU: batch 2, LR / 8, 8x the
    iterations and LR steps."""
    args = build_argument_parser().parse_args(
        ["--config-file", ROOT + "COCO/mask_rcnn_vil_t_1x.py", "--auto-scale"]
    )
    with pytest.warns(UserWarning, match="CUDA is not available"):
        cfg = load_config(args, world_size=1)
    assert cfg.dataloader.train.total_batch_size == 2
    assert math.isclose(cfg.optimizer.lr, 1e-4 / 8)
    assert cfg.train.max_iter == 720000
    assert list(cfg.lr_multiplier.scheduler.milestones) == [480000, 640000]


TINY_DEMO = TINY_BACKBONE + [
    "model.roi_heads.batch_size_per_image=32",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.mapper.augmentations.1.target_height=128",
    "dataloader.train.mapper.augmentations.1.target_width=128",
    "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
]


def test_training_tool_initialises_trains_and_resumes(shapes_datasets_root, tmp_path):
    """tools/lazyconfig_train_net.py on the ViL demo: train.init_checkpoint from a checkpoint,
    a few iterations with periodic checkpoints, evaluation, then a resume that continues."""
    torch.manual_seed(0)
    cfg = get_config(DEMO)
    apply_overrides_checked(cfg, TINY_DEMO)
    init = tmp_path / "init.pth"
    source = instantiate(cfg.model)
    MViTCheckpointer(source, str(tmp_path)).save("init")
    out = tmp_path / "run"
    argv = ["--config-file", DEMO] + TINY_DEMO
    argv += [
        f"train.output_dir={out}",
        f"train.init_checkpoint={init}",
        "train.max_iter=4",
        "train.checkpointer.period=2",
        "train.eval_period=4",
        "lr_multiplier.scheduler.milestones=[2,3]",
    ]
    with pytest.warns(UserWarning, match="CUDA is not available"):
        results = main(build_argument_parser().parse_args(argv))
    assert {"bbox", "segm"} <= set(results)
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    argv = [a if not a.startswith("train.max_iter") else "train.max_iter=6" for a in argv]
    argv[argv.index("lr_multiplier.scheduler.milestones=[2,3]")] = (
        "lr_multiplier.scheduler.milestones=[4,5]"
    )
    with pytest.warns(UserWarning, match="CUDA is not available"):
        main(build_argument_parser().parse_args(["--resume"] + argv))
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 5
