"""The MViTv2 backbone: shapes, attention layouts, checkpointing, gradients, presets, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from mvit_det.modeling.backbones.mvit import mvit_block_layout
from mvit_det import (
    MVIT_PRESETS,
    MViT,
    add_mvit_config,
    apply_mvit_preset,
    mvit_kwargs_from_cfg,
    build_mvit_fpn,
    mvit_preset,
)

from helpers import TINY_MVIT, relative_error

TINY = TINY_MVIT


def tiny_mvit(**overrides) -> MViT:
    torch.manual_seed(0)
    return MViT(**{**TINY, "rel_pos_zero_init": False, **overrides})


@pytest.mark.parametrize("size", [(224, 224), (320, 480), (300, 410), (64, 64)])
def test_outputs_match_output_shape(size):
    model = tiny_mvit().eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, *size))
    specs = model.output_shape()
    assert list(outputs) == ["scale2", "scale3", "scale4", "scale5"] == list(specs)
    for n, (name, feature) in enumerate(outputs.items(), start=2):
        assert specs[name].stride == 2**n
        assert specs[name].channels == TINY["embed_dim"] * 2 ** (n - 2)
        expected = (1, specs[name].channels, math.ceil(size[0] / 2**n), math.ceil(size[1] / 2**n))
        assert tuple(feature.shape) == expected
        assert torch.isfinite(feature).all()


def test_out_features_subset():
    model = tiny_mvit(out_features=("scale3", "scale5"))
    outputs = model(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["scale3", "scale5"]
    assert set(model.output_shape()) == {"scale3", "scale5"}
    assert not any(name.startswith("scale2_norm") for name in model.state_dict())


def test_block_layout_follows_the_published_rules():
    model = MViT(**mvit_preset("B"))
    specs = model.block_specs
    last = MVIT_PRESETS["B"]["last_block_indexes"]
    assert [s.index for s in specs] == list(range(24))
    global_blocks = [s.index for s in specs if s.window == 0]
    assert global_blocks == list(last[1:])
    # first block of stages 3-5 pools q and doubles channels and heads
    assert [s.index for s in specs if s.stride_q == 2] == [i + 1 for i in last[:3]]
    assert [s.index for s in specs if s.dim_out != s.dim] == [i + 1 for i in last[:3]]
    assert [(s.dim_out, s.num_heads) for s in specs if s.index in last] == [
        (96, 1), (192, 2), (384, 4), (768, 8)
    ]  # fmt: skip
    # kv stride 4/2/1/1, doubled in the last block of stages 3 and 4
    expected_kv = {2: 4, 3: 2, 4: 1, 5: 1}
    for s in specs:
        doubled = s.index in (last[1], last[2])
        assert s.stride_kv == expected_kv[s.stage] * (2 if doubled else 1), s.index
    # windows in tokens of the block's input map: 56 in stage 2 and the first block of stage 3
    windows = {s.index: s.window for s in specs if s.window}
    assert windows[0] == windows[last[0]] == windows[last[0] + 1] == 56
    assert windows[last[0] + 2] == 28 and windows[last[1] + 1] == 28
    assert windows[last[1] + 2] == 14 and windows[last[2] + 1] == 14
    assert [s.input_size for s in specs[last[0] : last[0] + 3]] == [56, 56, 28]
    # stochastic depth rises linearly to the rate of the last block
    assert specs[0].drop_path == 0 and specs[-1].drop_path == pytest.approx(0.4)
    # rel-pos table for the first block of stage 3: S = 56, q stride 2, kv stride 2 -> 2*28-1
    assert model.blocks[last[0] + 1].attn.rel_pos_h.shape == (55, 96)  # 192 ch, 2 heads
    assert model.blocks[0].attn.rel_pos_h.shape == (111, 96)


def test_block_layout_is_a_pure_function():
    kwargs = dict(
        embed_dim=8,
        depth=4,
        num_heads=1,
        last_block_indexes=(0, 1, 2, 3),
        global_blocks={3},
        adaptive_kv_stride=4,
        adaptive_window_size=16,
        double_kv_stride_in_last_blocks=False,
        drop_path_rate=0.3,
        input_size=56,
    )
    specs = mvit_block_layout(**kwargs)
    assert specs == mvit_block_layout(**kwargs)
    assert [(s.stage, s.dim, s.dim_out, s.stride_kv, s.window) for s in specs] == [
        (2, 8, 8, 4, 16), (3, 8, 16, 2, 16), (4, 16, 32, 1, 8), (5, 32, 64, 1, 0)
    ]  # fmt: skip


def test_window_covering_the_whole_map_equals_global_attention():
    # At 224x224 every window (56, 28, 14, 7 tokens) covers exactly its map.
    hybrid = tiny_mvit(attention_mode="hybrid").eval()
    window = tiny_mvit(attention_mode="window").eval()
    global_ = tiny_mvit(attention_mode="global").eval()
    window.load_state_dict(hybrid.state_dict())
    global_.load_state_dict(hybrid.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b, c = hybrid(x), window(x), global_(x)
    for name in a:
        assert relative_error(a[name], c[name]) < 1e-5
        assert relative_error(b[name], c[name]) < 1e-5
    # ... and a window smaller than the map does change the result.
    small = tiny_mvit(adaptive_window_size=28).eval()
    small.load_state_dict(hybrid.state_dict())
    with torch.no_grad():
        assert relative_error(small(x)["scale2"], c["scale2"]) > 1e-3


@pytest.mark.parametrize("size, rate", [("B", 0.4), ("H", 0.6)])
def test_drop_path_rises_linearly_over_all_blocks(size, rate):
    """Each block's stochastic depth module has rate ``i * rate / (depth - 1)``: 0 for the first
    block (no module), ``rate`` for the last, in equal steps."""
    with torch.device("meta"):
        model = MViT(**mvit_preset(size, drop_path_rate=rate))
    depth = MVIT_PRESETS[size]["depth"]
    assert len(model.blocks) == depth
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    rates = [0.0] + [block.drop_path.drop_prob for block in model.blocks[1:]]
    assert rates == pytest.approx([i * rate / (depth - 1) for i in range(depth)], abs=1e-12)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert max(steps) - min(steps) < 1e-12  # equal steps, whatever the rate


def test_explicit_global_block_indexes():
    model = tiny_mvit(global_block_indexes=(0, 4))
    assert [s.window == 0 for s in model.block_specs] == [True, False, False, False, True]


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_activation_checkpointing_matches_plain(attn_impl):
    plain = tiny_mvit(drop_path_rate=0.3, attn_impl=attn_impl).train()
    ckpt = tiny_mvit(drop_path_rate=0.3, attn_impl=attn_impl, use_act_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 96, 128)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same stochastic-depth draws
        out = model(x)
        loss = sum((f**2).mean() for f in out.values())
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grad_a), (out_b, grad_b) = results
    for name in out_a:
        torch.testing.assert_close(out_a[name], out_b[name], rtol=1e-5, atol=1e-6)
    assert grad_a.keys() == grad_b.keys()
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-4, atol=1e-6)


def test_every_parameter_receives_a_gradient():
    model = tiny_mvit(use_abs_pos=True).train()
    out = model(torch.randn(2, 3, 80, 112))
    sum(f.sum() for f in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_abs_pos_embedding_is_resized_with_class_token_slot():
    model = tiny_mvit(use_abs_pos=True, pretrain_img_size=64)
    assert model.pos_embed.shape == (1, 16 * 16 + 1, 16)
    out = model(torch.randn(1, 3, 96, 160))
    assert out["scale2"].shape[-2:] == (24, 40)
    model_nocls = tiny_mvit(use_abs_pos=True, pretrain_img_size=64, pretrain_use_cls_token=False)
    assert model_nocls.pos_embed.shape == (1, 16 * 16, 16)


def expected_parameter_count(
    embed_dim: int, depth: int, num_heads: int, last_block_indexes, **_
) -> int:
    """Counts parameters from the architecture rules (docs/architecture.md), not the code."""
    total = 3 * embed_dim * 49 + embed_dim  # patch embedding
    dim, heads = embed_dim, num_heads
    grid = 56  # side of the block's input map at 224
    kv = 4
    for i in range(depth):
        first = i - 1 in last_block_indexes
        dim_out, heads = (2 * dim, 2 * heads) if first else (dim, heads)
        sq = 2 if first else 1
        skv = kv * (2 if i in last_block_indexes[1:3] else 1)
        hd = dim_out // heads
        rel = 2 * max(grid // sq, grid // skv) - 1
        total += 2 * dim  # norm1
        total += dim * 3 * dim_out + 3 * dim_out  # qkv
        total += 3 * (hd * 9 + 2 * hd)  # pooling convs + norms
        total += 2 * rel * hd  # rel_pos_h, rel_pos_w
        total += dim_out * dim_out + dim_out  # attn.proj
        total += 2 * dim_out  # norm2
        total += 2 * 4 * dim_out * dim_out + 5 * dim_out  # mlp
        if dim != dim_out:
            total += dim * dim_out + dim_out  # skip projection
        if first:
            grid //= 2
        if i in last_block_indexes:
            kv = max(kv // 2, 1)
        dim = dim_out
    total += 2 * embed_dim * (1 + 2 + 4 + 8)  # scale norms
    return total


@pytest.mark.parametrize("size", ["T", "S", "B", "L", "H"])
def test_preset_parameter_counts(size):
    with torch.device("meta"):
        model = MViT(**mvit_preset(size))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(**MVIT_PRESETS[size])
    assert len(model.blocks) == MVIT_PRESETS[size]["depth"]
    assert model.use_act_checkpoint == (size == "H")


def test_fpn_helper_and_lazy_config():
    bottom_up = tiny_mvit()
    fpn = build_mvit_fpn(bottom_up, out_channels=32)
    assert fpn.size_divisibility == 32
    out = fpn(torch.randn(1, 3, 96, 160))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 32, 24, 40),
        "p3": (1, 32, 12, 20),
        "p4": (1, 32, 6, 10),
        "p5": (1, 32, 3, 5),
        "p6": (1, 32, 2, 3),
    }
    lazy = L(FPN)(
        bottom_up=L(MViT)(**TINY),
        in_features=["scale2", "scale3", "scale4", "scale5"],
        out_channels=32,
        top_block=L(LastLevelMaxPool)(),
    )
    lazy_fpn = instantiate(lazy)
    assert isinstance(lazy_fpn.bottom_up, MViT)
    assert lazy_fpn(torch.randn(1, 3, 64, 64))["p6"].shape == (1, 32, 1, 1)


def test_presets_set_the_same_keys_so_they_replace_each_other():
    keys = {size: set(p) for size, p in MVIT_PRESETS.items()}
    assert all(k == keys["B"] for k in keys.values()), keys
    lazy = L(MViT)(**mvit_preset("H"))
    lazy.update(mvit_preset("B"))
    assert dict(lazy) == dict(L(MViT)(**mvit_preset("B")))
    assert lazy.use_act_checkpoint is False
    cfg = add_mvit_config(get_cfg())
    apply_mvit_preset(cfg, "H")
    apply_mvit_preset(cfg, "B")
    assert cfg.MODEL.MVIT == add_mvit_config(get_cfg()).MODEL.MVIT


def test_yacs_keys_are_the_mvit_arguments():
    import inspect

    params = set(inspect.signature(MViT).parameters) - {"in_chans", "act_layer", "norm_layer"}
    cfg = add_mvit_config(get_cfg())
    assert set(cfg.MODEL.MVIT) == {p.upper() for p in params} | {"NORM_EPS"}
    # every key reaches the model: non-default values round-trip through the translation
    chosen = dict(
        mvit_preset("T"),
        adaptive_window_size=28,
        attention_mode="window",
        attn_impl="eager",
        out_features=("scale3", "scale4"),
        qkv_bias=False,
    )
    for name, value in chosen.items():
        cfg.MODEL.MVIT[name.upper()] = list(value) if isinstance(value, tuple) else value
    cfg.MODEL.MVIT.NORM_EPS = 1e-5
    kwargs = mvit_kwargs_from_cfg(cfg, in_chans=4)
    assert {k: kwargs[k] for k in chosen} == chosen
    assert kwargs["in_chans"] == 4 and kwargs["norm_layer"](8).eps == 1e-5
    assert set(kwargs) == params | {"in_chans", "norm_layer"}


def test_registry_builder_for_yacs_configs():
    cfg = get_cfg()
    add_mvit_config(cfg)
    apply_mvit_preset(cfg, "T")
    cfg.MODEL.BACKBONE.NAME = "build_mvit_fpn_backbone"
    cfg.MODEL.MVIT.EMBED_DIM = 16
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, MViT)
    assert len(backbone.bottom_up.blocks) == 10
    assert backbone.bottom_up.blocks[0].norm1.eps == 1e-6
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert all(v.shape[1] == 32 for v in out.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(last_block_indexes=(0, 2, 4)), "last_block_indexes=(0, 2, 4) must be 4 ints"),
        (dict(last_block_indexes=(0, 3, 2, 4)), "strictly increasing"),
        (dict(last_block_indexes=(0, 1, 2, 7)), "beyond the last block"),
        (dict(last_block_indexes=(0, 1, 2, 3)), "before the last block"),
        (dict(attention_mode="shifted"), "attention_mode='shifted' is unknown"),
        (dict(adaptive_window_size=18), "adaptive_window_size=18 gives block 0 a window"),
        (dict(adaptive_window_size=-1), "adaptive_window_size=-1 must be an int >= 0"),
        (dict(attn_impl="flash"), "attn_impl='flash' is unknown"),
        (dict(attention_mode="global", global_block_indexes=(1,)), "only applies to"),
        (dict(global_block_indexes=(9,)), "global_block_indexes=(9,) has [9]"),
        (dict(out_features=("scale6",)), "must be a subset of"),
        (dict(num_heads=3), "embed_dim=16 must be divisible by num_heads=3"),
        (dict(depth=3, last_block_indexes=(0, 1, 2, 2)), "depth=3 must be an int >= 4"),
        (dict(num_heads=0), "num_heads=0 must be an int >= 1"),
        (dict(embed_dim=0), "embed_dim=0 must be an int >= 1"),
        (dict(patch_stride=0), "patch_stride=0 must be an int or a pair of ints >= 1"),
        (dict(patch_kernel=(7, 7, 7)), "patch_kernel=(7, 7, 7) must be an int or a pair"),
        (dict(qkv_pool_kernel=(2, 2)), "qkv_pool_kernel=(2, 2) must be odd"),
        (dict(drop_path_rate=1.0), "drop_path_rate=1.0 must be in [0, 1)"),
        (dict(drop_path_rate=-0.1), "drop_path_rate=-0.1 must be in [0, 1)"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        MViT(**{**TINY, **kwargs})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 64, 64), "expects images of shape (N, 3, H, W), got (3, 64, 64)"),
        (torch.randn(1, 1, 64, 64), "got (1, 1, 64, 64)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point images, got dtype"),
        ([torch.randn(3, 64, 64)], "got list"),
        (torch.randn(1, 3, 64, 64, dtype=torch.float64), "images of dtype torch.float64 but its"),
    ],
)
def test_bad_inputs(x, message):
    with pytest.raises(ValueError) as err:
        tiny_mvit()(x)
    assert message in str(err.value)


def test_bad_preset_name():
    with pytest.raises(ValueError, match="unknown MViTv2 size 'XL'"):
        mvit_preset("XL")


def test_default_norm_is_layernorm_eps_1e6():
    model = tiny_mvit()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
