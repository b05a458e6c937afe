"""Reading published ViL weights: the classification layout (``{"net": ...}``, ``module.``
prefix, full attention with a fused ``qkv`` in stages 3-4), the Detectron2 detection layout
(``*_global`` aliases, index buffers, unused classifier), the checkpointer, the conversion tool
and the errors. The files are written here with the published key layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from mvit_det import ViL, vil_preset
from mvit_det.checkpoint import (
    ArchitectureMismatchError,
    MissingBackboneKeysError,
    MViTCheckpointer,
    adapt_vil_state_dict,
    convert_bias_table,
    find_backbone,
)
from mvit_det.modeling.backbones.vil.geometry import relative_bias_index
from mvit_det.modeling.backbones.vil.weights import full_attention_index, published_window_index
from mvit_det.tools import convert_checkpoint

from helpers import relative_error

# Stages 1-2 Vision Longformer attention with w = 3; at the 96-pixel pretraining size stages 3
# and 4 see 6 x 6 and 3 x 3 maps and use full attention, as the published classification models.
ARCH = dict(
    embed_dims=(16, 24, 32, 48),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 3),
    num_global_tokens=(1, 1, 1, 0),
    window=3,
)
PRETRAIN_MAPS = {3: 6, 4: 3}  # stage -> side of its map at the pretraining size


def vil_model(**overrides) -> ViL:
    torch.manual_seed(0)
    return ViL(**{**ARCH, **overrides})


def classification_state(model: ViL, seed: int = 1) -> Dict[str, torch.Tensor]:
    """The state dict of a published classification model of ``model``'s size: ``module.``
    prefix; stages 1-2 Vision Longformer attention with ``*_global`` aliases and index buffers;
    stages 3-4 full attention (fused qkv, a table for the pretraining map); head and norm."""
    g = torch.Generator().manual_seed(seed)
    state: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        state[key] = torch.randn(value.shape, generator=g) * 0.1
    for stage in (1, 2, 3, 4):
        for block in range(1, 2 * ARCH["depths"][stage - 1], 2):
            attn = f"layer{stage}.{block}.attn."
            heads = ARCH["num_heads"][stage - 1]
            if stage in PRETRAIN_MAPS:  # full attention
                n = PRETRAIN_MAPS[stage]
                for p in ("weight", "bias"):
                    state[attn + f"qkv.{p}"] = torch.cat(
                        [state.pop(attn + f"query.{p}"), state.pop(attn + f"kv.{p}")]
                    )
                state[attn + "local_relative_position_bias_table"] = torch.randn(
                    (2 * n - 1) ** 2, heads, generator=g
                )
                state[attn + "relative_position_index"] = full_attention_index(n)
            else:
                for m in ("query", "kv", "proj"):
                    for p in ("weight", "bias"):
                        state[attn + f"{m}_global.{p}"] = state[attn + f"{m}.{p}"]
                state[attn + "relative_position_index"] = published_window_index(3)
    last = ARCH["embed_dims"][-1]
    state["norm.weight"], state["norm.bias"] = torch.ones(last), torch.zeros(last)
    state["head.weight"], state["head.bias"] = torch.randn(1000, last, generator=g), torch.zeros(
        1000
    )
    return {"module." + k: v for k, v in state.items()}


def write_classification_file(path: Path, state: Dict[str, torch.Tensor]) -> str:
    torch.save(
        {
            "net": state,
            "arch": "msvit",
            "epoch": 300,
            "best_acc": 82.4,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
            "scheduler": {"last_epoch": 300},
        },
        path,
    )
    return str(path)


def full_attention(
    x: torch.Tensor, state: Dict[str, torch.Tensor], attn: str, heads: int, n: int, G: int
) -> torch.Tensor:
    """Full attention of a published classification layer on an n x n map with G global
    tokens, from the rules: the table entry ``(dr + n - 1) * (2n - 1) + (dc + n - 1)`` for local
    pairs, g2l[0] for global -> local, g2l[1] for local -> global, g2g between globals."""
    B, N, C = x.shape
    d = C // heads
    q, k, v = (x @ state[attn + "qkv.weight"].T + state[attn + "qkv.bias"]).chunk(3, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(B, N, heads, d).transpose(1, 2)

    table = state[attn + "local_relative_position_bias_table"]
    bias = table[full_attention_index(n)].permute(2, 0, 1)  # (heads, n^2, n^2)
    if G:
        g2l, g2g = (
            state[attn + "g2l_relative_position_bias"],
            state[attn + "g2g_relative_position_bias"],
        )
        top = torch.cat([g2g, g2l[0][:, :, None].expand(heads, G, n * n)], dim=-1)
        rows = torch.cat([g2l[1][:, None, :].expand(heads, n * n, G), bias], dim=-1)
        bias = torch.cat([top, rows], dim=1)  # (heads, N, N)
    logits = split(q) @ split(k).transpose(-2, -1) * d**-0.5 + bias
    out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, N, C)
    return out @ state[attn + "proj.weight"].T + state[attn + "proj.bias"]


def unprefixed(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module.") :]: v for k, v in state.items()}


def test_published_index_buffers_match_the_table_layout():
    """The published window index lists the 9 neighbour chunks row by row, w^2 keys each; it is
    a permutation of our raster-order index over the 3w x 3w region."""
    w = 3
    published = published_window_index(w)
    ours = relative_bias_index(w)
    assert published.shape == ours.shape == (9, 81)
    assert torch.equal(published.sort(dim=1).values, ours.sort(dim=1).values)
    # query (0, 0), first key of the top-left neighbour chunk: offset (0 - (-3), 0 - (-3))
    assert published[0, 0] == (3 + 2 * w - 1) * (4 * w - 1) + (3 + 2 * w - 1)
    # query (0, 0), first key of its own chunk (the 5th neighbour): offset (0, 0)
    assert published[0, 4 * w * w] == (2 * w - 1) * (4 * w - 1) + (2 * w - 1)
    assert full_attention_index(2).tolist() == [
        [4, 3, 1, 0],
        [5, 4, 2, 1],
        [7, 6, 4, 3],
        [8, 7, 5, 4],
    ]


@pytest.mark.numerics
def test_centre_conversion_is_exact_and_bilinear_is_not():
    """Stage 3 (a 2w x 2w map: the tables have the same layout) converts exactly; the stage-4
    table (a w x w map) is exact when centre-embedded, while the published bilinear resize
    changes the function."""
    model = vil_model().double()
    state = unprefixed(classification_state(model))
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    mapped, report = adapt_vil_state_dict(state, model.state_dict(), "")
    model.load_state_dict(mapped)
    torch.manual_seed(0)
    for stage, block in ((3, 1), (3, 3), (4, 1)):
        n, G = PRETRAIN_MAPS[stage], ARCH["num_global_tokens"][stage - 1]
        attn = f"layer{stage}.{block}.attn."
        x = torch.randn(2, G + n * n, ARCH["embed_dims"][stage - 1], dtype=torch.float64)
        layer = getattr(model, f"layer{stage}")[block].attn
        expected = full_attention(x, state, attn, ARCH["num_heads"][stage - 1], n, G)
        with torch.no_grad():
            assert relative_error(layer(x, (n, n)), expected) <= 1e-12, attn
    assert [k for k, _, _ in report.resized] == ["layer4.1.attn.local_relative_position_bias_table"]
    table = state["layer4.1.attn.local_relative_position_bias_table"]
    resized = convert_bias_table(table, 3, "bilinear")
    assert resized.shape == (121, 3)
    model.layer4[1].attn.local_relative_position_bias_table.data.copy_(resized)
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    with torch.no_grad():
        changed = model.layer4[1].attn(x, (3, 3))
    assert relative_error(changed, full_attention(x, state, "layer4.1.attn.", 3, 3, 0)) > 1e-3


def test_centre_conversion_keeps_every_offset():
    table = torch.arange(25.0)[:, None].repeat(1, 2)  # 5 x 5 offsets (n = 3), 2 heads
    out = convert_bias_table(table, 2)  # (4w - 1)^2 = 49 offsets
    grid, source = out.view(7, 7, 2), table.view(5, 5, 2)
    assert torch.equal(grid[1:6, 1:6], source)  # the same offsets keep their values
    assert torch.equal(grid[0, 3], source[0, 2]) and torch.equal(grid[6, 6], source[4, 4])  # edges
    bigger = convert_bias_table(torch.randn(121, 2), 2)  # a larger source is cropped
    assert bigger.shape == (49, 2)
    with pytest.raises(ValueError, match="'nearest' is unknown"):
        convert_bias_table(table, 2, "nearest")


def detector(**overrides) -> torch.nn.Module:
    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    cfg.backbone.bottom_up = L(ViL)(**{**ARCH, **overrides})
    cfg.backbone.in_features = ["scale2", "scale3", "scale4", "scale5"]
    cfg.roi_heads.num_classes = 3
    torch.manual_seed(0)
    return instantiate(cfg)


def test_checkpointer_loads_a_classification_checkpoint(tmp_path):
    state = classification_state(vil_model())
    path = write_classification_file(tmp_path / "model_best.pth", state)
    model = detector()
    checkpointer = MViTCheckpointer(model)
    checkpointer.load(path)
    report = checkpointer.last_report
    assert "under 'net'" in report.source and "full attention in stages [3, 4]" in report.layout
    assert not report.missing and not report.new
    backbone = model.backbone.bottom_up.state_dict()
    assert len(report.loaded) + len(report.resized) == len(backbone)
    dropped = {k for k, _ in report.dropped}
    assert {"head.weight", "norm.bias", "layer1.1.attn.kv_global.weight"} <= dropped
    assert "layer3.1.attn.relative_position_index" in dropped
    qkv = state["module.layer3.3.attn.qkv.weight"]
    assert torch.equal(backbone["layer3.3.attn.query.weight"], qkv[:32])
    assert torch.equal(backbone["layer3.3.attn.kv.weight"], qkv[32:])
    assert torch.equal(backbone["layer1.2.mlp.fc1.weight"], state["module.layer1.2.mlp.fc1.weight"])
    text = report.format()
    assert "resized : 1" in text and "classifier head" in text


def detection_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A published detection model_final.pth ``model`` dict of a detector: backbone keys with
    ``*_global`` aliases and index buffers, the unused classifier, FPN and heads."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prefix = "backbone.bottom_up."
    for key in list(state):
        if key.startswith(prefix) and key.endswith("attn.query.weight"):
            attn = key[: -len("query.weight")]
            if attn + "g2g_relative_position_bias" in state:
                for m in ("query", "kv", "proj"):
                    for p in ("weight", "bias"):
                        state[attn + f"{m}_global.{p}"] = state[attn + f"{m}.{p}"]
            state[attn + "relative_position_index"] = published_window_index(3)
    state[prefix + "norm.weight"], state[prefix + "norm.bias"] = torch.ones(48), torch.zeros(48)
    state[prefix + "head.weight"], state[prefix + "head.bias"] = torch.randn(1000, 48), torch.zeros(
        1000
    )
    return state


def test_checkpointer_loads_a_detection_checkpoint(tmp_path):
    source = detector()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "model_final.pth"
    torch.save({"model": detection_state(source), "iteration": 89999}, path)
    target = detector()
    extra = MViTCheckpointer(target).load(str(path))
    assert extra["iteration"] == 89999
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # a model with separate global projections takes the aliases as its own weights
    unshared = detector(share_global_weights=False)
    MViTCheckpointer(unshared).load(str(path))
    loaded = unshared.backbone.bottom_up
    assert torch.equal(loaded.layer1[1].attn.kv_global.weight, loaded.layer1[1].attn.kv.weight)


def test_checkpointer_resumes_its_own_checkpoint(tmp_path):
    model = detector()
    MViTCheckpointer(model, str(tmp_path)).save("model_0000009", iteration=9)
    other = detector()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    checkpointer = MViTCheckpointer(other, str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 9
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def mapping_error(state, model=None, **kwargs) -> str:
    model = model or vil_model()
    with pytest.raises(ArchitectureMismatchError) as err:
        adapt_vil_state_dict(state, model.state_dict(), "", **kwargs)
    return str(err.value)


def test_errors_name_the_problem_and_the_fix():
    state = unprefixed(classification_state(vil_model()))
    # another window: the index buffers and tables say w = 3, the model has w = 4
    message = mapping_error(state, vil_model(window=4))
    assert "window" in message and "build the model with the checkpoint's window" in message
    # separate global weights for a model that shares them
    unshared = dict(state)
    unshared["layer1.1.attn.kv_global.weight"] = unshared["layer1.1.attn.kv.weight"] + 1
    assert "share_global_weights=False" in mapping_error(unshared)
    # absolute position embeddings (APE models)
    ape = dict(state, **{"layer1.0.x_pos_embed": torch.zeros(1, 24, 8)})
    assert "absolute position embedding" in mapping_error(ape)
    # another size: names the checkpoint's size and the model's
    message = mapping_error(state, ViL(**vil_preset("T")))
    assert "does not fit" in message and "ViL-T (embed_dims=(48, 96, 192, 384)" in message
    # another number of global tokens
    message = mapping_error(state, vil_model(num_global_tokens=(2, 1, 1, 0)))
    assert "global tokens" in message
    # not ViL weights at all
    assert "holds no ViL backbone weights" in mapping_error(
        {"blocks.0.attn.qkv.weight": torch.zeros(3, 1)}
    )
    # a wrong full-attention index buffer
    broken = dict(
        state, **{"layer3.1.attn.relative_position_index": full_attention_index(6).flip(0)}
    )
    assert "not the relative-position index of full attention on a 6x6 map" in mapping_error(broken)


def test_checkpointer_refuses_missing_backbone_keys(tmp_path):
    state = classification_state(vil_model())
    del state["module.layer2.2.mlp.fc1.weight"]
    path = write_classification_file(tmp_path / "partial.pth", state)
    with pytest.raises(MissingBackboneKeysError, match="layer2.2.mlp.fc1.weight"):
        MViTCheckpointer(detector()).load(path)


def test_find_backbone_finds_vil():
    model = detector()
    prefix, backbone = find_backbone(model)
    assert prefix == "backbone.bottom_up." and isinstance(backbone, ViL)


@pytest.mark.parametrize("bias_table", ["centre", "bilinear"])
def test_convert_tool_with_a_named_vil_size(tmp_path, capsys, bias_table):
    """``--model vil_t`` builds ViL-T; the output loads into it strictly; the stage-4 table is
    centre-embedded or bilinearly resized as asked."""
    model = ViL(**vil_preset("T"))
    g = torch.Generator().manual_seed(0)
    state: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        state[key] = torch.randn(value.shape, generator=g)
    for stage, n in ((3, 14), (4, 7)):  # 224-pixel pretraining
        for block in range(1, 2 * vil_preset("T")["depths"][stage - 1], 2):
            attn = f"layer{stage}.{block}.attn."
            for p in ("weight", "bias"):
                state[attn + f"qkv.{p}"] = torch.cat(
                    [state.pop(attn + f"query.{p}"), state.pop(attn + f"kv.{p}")]
                )
            heads = vil_preset("T")["num_heads"][stage - 1]
            state[attn + "local_relative_position_bias_table"] = torch.randn(
                (2 * n - 1) ** 2, heads, generator=g
            )
            state[attn + "relative_position_index"] = full_attention_index(n)
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 384), torch.zeros(1000)
    source = write_classification_file(
        tmp_path / "tiny.pth", {"module." + k: v for k, v in state.items()}
    )
    output = tmp_path / f"vil_t_{bias_table}.pth"
    status = convert_checkpoint.main(
        [source, str(output), "--model", "vil_t", "--bias-table", bias_table]
    )
    printed = capsys.readouterr().out
    assert status == 0 and "wrote" in printed and "resized : 1" in printed
    converted = torch.load(output, weights_only=True)["model"]
    prefix = "backbone.bottom_up."
    ViL(**vil_preset("T")).load_state_dict(
        {k[len(prefix) :]: v for k, v in converted.items()}, strict=True
    )
    table = converted[prefix + "layer4.1.attn.local_relative_position_bias_table"]
    expected = convert_bias_table(
        state["layer4.1.attn.local_relative_position_bias_table"], 7, bias_table
    )
    assert torch.equal(table, expected)
    # stage 3: 14 x 14 full attention has exactly the layout of w = 7
    assert torch.equal(
        converted[prefix + "layer3.1.attn.local_relative_position_bias_table"],
        state["layer3.1.attn.local_relative_position_bias_table"],
    )


def test_convert_tool_reports_mismatches(tmp_path, capsys):
    source = write_classification_file(tmp_path / "tiny.pth", classification_state(vil_model()))
    status = convert_checkpoint.main([source, str(tmp_path / "out.pth"), "--model", "vil_s"])
    assert status == 2 and "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    status = convert_checkpoint.main([source, str(tmp_path / "out.pth"), "--model", "vil_xl"])
    assert status == 2 and "vil_t, vil_s" in capsys.readouterr().err
