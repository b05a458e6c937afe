"""Equality with Detectron2's own MViT (when the installed Detectron2 has it): same parameter
names and shapes, and the same outputs for the same weights."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from mvit_det import MViT, mvit_preset

from helpers import relative_error

pytestmark = pytest.mark.numerics

reference = pytest.importorskip(
    "detectron2.modeling.backbone.mvit", reason="this Detectron2 build has no MViT to compare with"
)

SMALL = dict(
    embed_dim=32,
    depth=6,
    num_heads=1,
    last_block_indexes=(0, 2, 4, 5),
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    rel_pos_zero_init=False,
)


@pytest.mark.parametrize("size", ["T", "B"])
def test_state_dict_names_and_shapes_match(size):
    kwargs = mvit_preset(size)
    ours = MViT(**kwargs).state_dict()
    theirs = reference.MViT(**kwargs).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("use_abs_pos", [False, True])
@pytest.mark.parametrize("hw", [(224, 224), (320, 480), (300, 410), (97, 131), (64, 64)])
def test_outputs_match_reference(attn_impl, use_abs_pos, hw):
    torch.manual_seed(0)
    kwargs = dict(SMALL, use_abs_pos=use_abs_pos)
    theirs = reference.MViT(**kwargs).eval()
    ours = MViT(**kwargs, attn_impl=attn_impl).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        expected, actual = theirs(x), ours(x)
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape
        assert relative_error(actual[name], expected[name]) <= 1e-5, name


def test_global_and_window_blocks_both_covered():
    # 320x480 has maps that are not multiples of the windows (padding) and global blocks.
    model = MViT(**SMALL)
    assert {spec.window for spec in model.block_specs} >= {0, 56, 28}
