"""The ViL backbone: shapes at any input size, stages and global tokens, presets and parameter
counts, yacs builders, activation checkpointing, low precision, errors."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from mvit_det import VIL_PRESETS, MViT, ViL, add_vil_config, apply_vil_preset, vil_kwargs_from_cfg
from mvit_det import vil_preset
from mvit_det.modeling.backbones.vil import ViLPatchEmbed

from helpers import (
    TINY_MVIT,
    TINY_VIL,
    assert_each_gradient_as_accurate,
    assert_grads_close,
    forward_backward,
    gradient_errors,
    normwise_error,
    relative_error,
)


def tiny_vil(**overrides) -> ViL:
    torch.manual_seed(0)
    return ViL(**{**TINY_VIL, **overrides})


@pytest.mark.parametrize("size", [(64, 96), (37, 53), (224, 224), (13, 250), (1, 1)])
def test_outputs_match_output_shape_at_any_size(size):
    model = tiny_vil().eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    specs = model.output_shape()
    assert list(outputs) == ["scale2", "scale3", "scale4", "scale5"] == list(specs)
    for n, (name, feature) in enumerate(outputs.items(), start=2):
        assert specs[name].stride == 2**n
        assert specs[name].channels == TINY_VIL["embed_dims"][n - 2]
        expected = (2, specs[name].channels, math.ceil(size[0] / 2**n), math.ceil(size[1] / 2**n))
        assert tuple(feature.shape) == expected
        assert torch.isfinite(feature).all()


def test_out_features_subset():
    model = tiny_vil(out_features=("scale3", "scale5"))
    outputs = model(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["scale3", "scale5"] == list(model.output_shape())


def test_stage_structure_and_published_names():
    """Stage i: patch embedding (layer{i}.0), then attention (odd) and MLP (even) blocks; the
    global tokens of each stage are its own; names of the published models."""
    model = ViL(**vil_preset("S"))
    names = set(model.state_dict())
    for key in (
        "layer1.0.proj.weight",
        "layer1.0.norm_embed.weight",
        "layer1.0.cls_token",
        "layer1.1.norm.weight",
        "layer1.1.attn.query.weight",
        "layer1.1.attn.kv.weight",
        "layer1.1.attn.proj.weight",
        "layer1.1.attn.local_relative_position_bias_table",
        "layer1.1.attn.g2l_relative_position_bias",
        "layer1.1.attn.g2g_relative_position_bias",
        "layer1.2.norm.weight",
        "layer1.2.mlp.fc1.weight",
        "layer1.2.mlp.fc2.bias",
        "layer3.16.mlp.fc2.weight",
        "layer4.2.mlp.fc1.weight",
    ):
        assert key in names, key
    assert "layer4.0.cls_token" not in names  # no global token in stage 4
    assert "layer4.1.attn.g2l_relative_position_bias" not in names
    assert not any("relative_position_index" in k or "_global" in k for k in names)
    sd = model.state_dict()
    assert tuple(sd["layer1.0.proj.weight"].shape) == (96, 3, 4, 4)
    assert tuple(sd["layer1.0.cls_token"].shape) == (1, 1, 96)
    assert tuple(sd["layer1.1.attn.kv.weight"].shape) == (192, 96)
    assert tuple(sd["layer1.1.attn.local_relative_position_bias_table"].shape) == (729, 3)
    assert tuple(sd["layer1.1.attn.g2l_relative_position_bias"].shape) == (2, 3, 1)
    assert tuple(sd["layer1.1.attn.g2g_relative_position_bias"].shape) == (3, 1, 1)
    assert tuple(sd["layer1.2.mlp.fc1.weight"].shape) == (384, 96)
    assert tuple(sd["layer4.1.attn.local_relative_position_bias_table"].shape) == (729, 12)
    # All LayerNorms have eps 1e-6.
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}


def test_global_tokens_are_dropped_at_the_end_of_each_stage():
    """Each stage's output is its local tokens only: the next stage starts from that map and
    its own new global tokens. The global tokens do act inside their stage."""
    model = tiny_vil().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        for i, (before, after) in enumerate([("scale2", "scale3"), ("scale3", "scale4")]):
            stage = model.stages()[i + 1]
            tokens, hw = stage[0](out[before])
            assert tokens.shape[1] == TINY_VIL["num_global_tokens"][i + 1] + hw[0] * hw[1]
            for attn_block, mlp_block in zip(stage[1::2], stage[2::2]):
                tokens = mlp_block(attn_block(tokens, hw))
            local = tokens[:, TINY_VIL["num_global_tokens"][i + 1] :]
            assert torch.equal(local.transpose(1, 2).unflatten(2, hw), out[after])
        model.layer1[0].cls_token.normal_()
        assert relative_error(model(x)["scale2"], out["scale2"]) > 1e-5


def test_drop_path_rises_linearly_over_all_block_pairs():
    model = ViL(**vil_preset("S", drop_path_rate=0.3))
    rates = [
        b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
        for stage in model.stages()
        for b in stage[1:]
    ]
    pairs = rates[0::2]
    assert rates[0::2] == rates[1::2]  # attention and MLP of a pair share the rate
    assert len(pairs) == 12
    assert pairs == pytest.approx([0.3 * i / 11 for i in range(12)])


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa", "recompute"])
def test_activation_checkpointing_matches_plain(attn_impl):
    plain = tiny_vil(attn_impl=attn_impl).train()
    checkpointed = tiny_vil(attn_impl=attn_impl, use_act_checkpoint=True).train()
    x = torch.randn(1, 3, 64, 96)
    out_p, grads_p = forward_backward(plain, x)
    out_c, grads_c = forward_backward(checkpointed, x)
    for name in out_p:
        assert relative_error(out_c[name], out_p[name]) <= 1e-6
    assert_grads_close(grads_c, grads_p, 1e-6)


def test_every_parameter_receives_a_gradient_but_the_dropped_global_rows():
    """Every parameter gets a gradient, except the global-query path of each stage's last
    attention block: its global outputs are dropped at the end of the stage (the published
    models have the same unused parameters)."""
    model = tiny_vil(share_global_weights=False).train()
    _, grads = forward_backward(model, torch.randn(1, 3, 64, 96))
    without = {n for n, g in grads.items() if not g.abs().sum() > 0}
    expected = set()
    for i, stage in enumerate(model.stages()):
        last = len(stage) - 2  # the last attention block of the stage
        if TINY_VIL["num_global_tokens"][i]:
            prefix = f"layer{i + 1}.{last}.attn."
            expected |= {prefix + "g2g_relative_position_bias"}
            expected |= {
                f"{prefix}{m}_global.{p}"
                for m in ("query", "kv", "proj")
                for p in ("weight", "bias")
            }
    assert without == expected
    g2l = grads["layer1.1.attn.g2l_relative_position_bias"]
    assert g2l[1].abs().sum() > 0 and g2l[0].abs().sum() == 0  # local -> global is used


@pytest.mark.numerics
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa", "recompute"])
@pytest.mark.parametrize("window_mode", ["chunk", "exact"])
def test_cores_agree_on_the_whole_backbone(attn_impl, window_mode):
    reference = tiny_vil(attn_impl="dense", window_mode=window_mode).double()
    model = tiny_vil(attn_impl=attn_impl, window_mode=window_mode).double()
    x = torch.randn(2, 3, 70, 45, dtype=torch.float64)
    out_r, grads_r = forward_backward(reference, x)
    out_m, grads_m = forward_backward(model, x)
    for name in out_r:
        assert relative_error(out_m[name], out_r[name]) <= 1e-10
    assert_grads_close(grads_m, grads_r, 1e-10)


@pytest.mark.numerics
@pytest.mark.parametrize("attn_impl", ["sdpa", "recompute"])
def test_bf16_autocast_is_close_to_fp32(attn_impl):
    """Under bf16 autocast every core rounds; measured against the fp32 result, the fused core
    and the recomputing core are about as accurate as the explicit one (outputs, and each
    non-vanishing parameter gradient against the explicit core's error for that same parameter:
    3x, or one bf16 eps relative to the parameter's gradient norm), and all stay at bf16's
    accuracy. Over 8 inputs, bf16 and fp16, both CPU capabilities and 1 or 2 threads, the largest
    fused/explicit ratio above the floor was 1.9."""
    eager, fused = tiny_vil(attn_impl="eager"), tiny_vil(attn_impl=attn_impl)
    x = torch.randn(2, 3, 64, 96)
    out_ref, grad_ref = forward_backward(eager, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_e, grad_e = forward_backward(eager, x)
        out_s, grad_s = forward_backward(fused, x)
    for name, ref in out_ref.items():
        assert normwise_error(out_s[name], ref) <= max(1.5 * normwise_error(out_e[name], ref), 0.02)
        assert normwise_error(out_s[name], ref) <= 0.05, name
    fused_errors, explicit_errors = gradient_errors(grad_s, grad_ref), gradient_errors(
        grad_e, grad_ref
    )
    assert max(explicit_errors.values()) < 0.5
    # The local relative-position tables take part, although their gradients fall below the RMS
    # cut of gradient_errors: both cores get them within about one eps. (The global-token
    # biases stay out: a few entries, each a sum of terms that cancel, so rounding noise.)
    for name in [n for n in grad_ref if "local_relative_position_bias_table" in n]:
        fused_errors[name] = normwise_error(grad_s[name], grad_ref[name])
        explicit_errors[name] = normwise_error(grad_e[name], grad_ref[name])
    eps = torch.finfo(torch.bfloat16).eps
    assert_each_gradient_as_accurate(fused_errors, explicit_errors, 3.0, eps)


def detector_parameters(model_cfg, size: str, head: str) -> int:
    """Parameters of a Detectron2 Mask R-CNN or RetinaNet with the standard heads on ViL."""
    preset = vil_preset(size)
    model_cfg.backbone.bottom_up = L(ViL)(**preset)
    if head == "retinanet":
        model_cfg.backbone.in_features = ["scale3", "scale4", "scale5"]
        model_cfg.backbone.top_block = L(LastLevelP6P7)(
            in_channels=preset["embed_dims"][-1], out_channels=256, in_feature="scale5"
        )
    else:
        model_cfg.backbone.in_features = ["scale2", "scale3", "scale4", "scale5"]
    return sum(p.numel() for p in instantiate(model_cfg).parameters())


# Published parameter counts (M) of the ViL detectors, Mask R-CNN / RetinaNet. They include the
# 1000-class classifier head and final norm that the published detection backbone builds but
# never uses; the official model built with standard Detectron2 heads has 26.81 / 44.94 / 60.06 /
# 76.08 M Mask R-CNN parameters with them.
PUBLISHED_M = {"T": (26.9, 16.64), "S": (45.0, 35.68), "M": (60.1, 50.77), "B": (76.1, 66.74)}
OFFICIAL_MASK_RCNN_M = {"T": 26.81, "S": 44.94, "M": 60.06, "B": 76.08}


@pytest.mark.parametrize("size", ["T", "S", "M", "B"])
def test_detector_parameter_counts_equal_published_minus_unused_head(size):
    last = VIL_PRESETS[size]["embed_dims"][-1]
    unused = last * 1000 + 1000 + 2 * last  # head (Linear(C, 1000)) + final LayerNorm
    mask_rcnn = detector_parameters(
        model_zoo.get_config("common/models/mask_rcnn_fpn.py").model, size, "mask_rcnn"
    )
    retinanet = detector_parameters(
        model_zoo.get_config("common/models/retinanet.py").model, size, "retinanet"
    )
    assert round((mask_rcnn + unused) / 1e6, 2) == OFFICIAL_MASK_RCNN_M[size]
    published_mask_rcnn, published_retinanet = PUBLISHED_M[size]
    assert abs((mask_rcnn + unused) / 1e6 - published_mask_rcnn) < 0.1
    assert abs((retinanet + unused) / 1e6 - published_retinanet) < 0.1


def test_presets_set_the_same_keys_and_accept_prefixes():
    keys = {frozenset(p) for p in VIL_PRESETS.values()}
    assert len(keys) == 1
    assert vil_preset("vil_s") == vil_preset("S") == vil_preset("ViL-S")
    assert vil_preset("b", drop_path_rate=0.0)["drop_path_rate"] == 0.0
    with pytest.raises(ValueError, match="unknown ViL size 'XL'"):
        vil_preset("XL")


def test_yacs_keys_and_builders():
    cfg = get_cfg()
    add_vil_config(cfg)
    assert tuple(cfg.MODEL.VIL.DEPTHS) == VIL_PRESETS["S"]["depths"]
    apply_vil_preset(cfg, "T")
    cfg.MODEL.VIL.EMBED_DIMS = [16, 24, 32, 48]
    cfg.MODEL.VIL.NUM_HEADS = [1, 2, 2, 3]
    cfg.MODEL.VIL.WINDOW_MODE = "exact"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    kwargs = vil_kwargs_from_cfg(cfg, in_chans=4)
    assert kwargs["in_chans"] == 4 and kwargs["norm_layer"](8).eps == 1e-6
    assert kwargs["embed_dims"] == (16, 24, 32, 48) and kwargs["depths"] == (1, 1, 9, 1)
    cfg.MODEL.BACKBONE.NAME = "build_vil_fpn_backbone"
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, ViL)
    assert backbone.bottom_up.layer1[1].attn.window_mode == "exact"
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_vil_fpn_backbone"
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert backbone.top_block.p6.in_channels == 48  # P6 from C5
    assert all(v.shape[1] == 32 for v in out.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embed_dims=(16, 24, 32)), "embed_dims=(16, 24, 32) must be 4 ints >= 1"),
        (dict(depths=(1, 0, 1, 1)), "depths=(1, 0, 1, 1) must be 4 ints >= 1"),
        (dict(num_heads=(3, 2, 2, 3)), "must be divisible by num_heads"),
        (dict(window=0), "window=0 must be 4 ints >= 1"),
        (dict(window=(7, 7)), "window=(7, 7) must be 4 ints >= 1"),
        (dict(num_global_tokens=(1, 1, -1, 0)), "num_global_tokens=(1, 1, -1, 0)"),
        (dict(window_mode="cyclic"), "window_mode='cyclic' is unknown"),
        (dict(attn_impl="flash"), "attn_impl='flash' is unknown"),
        (dict(out_features=("res2",)), "must be a subset of"),
        (dict(drop_path_rate=1.0), "drop_path_rate=1.0 must be in [0, 1)"),
        (dict(mlp_ratio=0), "mlp_ratio=0 must be > 0"),
        (dict(in_chans=0), "in_chans=0 must be an int >= 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        ViL(**{**TINY_VIL, **kwargs})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 32, 32), "expects images of shape (N, 3, H, W)"),
        (torch.randn(1, 4, 32, 32), "expects images of shape (N, 3, H, W)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point images"),
        (torch.randn(1, 3, 0, 32), "empty image"),
        (torch.randn(1, 3, 32, 32, dtype=torch.float64), "dtype torch.float64"),
    ],
)
def test_bad_inputs(x, message):
    with pytest.raises(ValueError) as err:
        tiny_vil()(x)
    assert "ViL" in str(err.value) and message in str(err.value)


def test_patch_embedding_pads_partial_patches():
    embed = ViLPatchEmbed(
        in_chans=3, embed_dim=8, patch_size=4, num_global=2, norm_layer=torch.nn.LayerNorm
    )
    tokens, hw = embed(torch.randn(1, 3, 9, 13))
    assert hw == (3, 4) and tokens.shape == (1, 2 + 12, 8)
    # The padded input equals an explicitly zero-padded image.
    x = torch.randn(1, 3, 9, 13)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3))
    assert torch.equal(embed(x)[0], embed(padded)[0])


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("mvit", dict(attn_impl="sdpa")),
        ("mvit", dict(attn_impl="eager")),
        ("vil", dict(attn_impl="sdpa")),
        ("vil", dict(attn_impl="eager")),
        ("vil", dict(attn_impl="dense")),
        ("vil", dict(attn_impl="sdpa", window_mode="exact")),
    ],
)
def test_empty_batch_gives_empty_maps_and_gradients(kind, overrides):
    """Both backbones take a batch of 0 images (e.g. a data-parallel shard with nothing left):
    maps of shape (0, C, h, w) as for one image, and a backward pass with all-zero gradients."""
    torch.manual_seed(0)
    model = (MViT(**TINY_MVIT, **overrides) if kind == "mvit" else tiny_vil(**overrides)).train()
    size = (40, 56)  # windows and chunks do not tile it
    with torch.no_grad():
        one = model(torch.randn(1, 3, *size))
    x = torch.randn(0, 3, *size, requires_grad=True)
    outputs = model(x)
    assert list(outputs) == list(one)
    for name, feature in outputs.items():
        assert tuple(feature.shape) == (0,) + tuple(one[name].shape[1:]), name
    sum(feature.sum() for feature in outputs.values()).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
