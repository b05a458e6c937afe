"""timm ``mvitv2_*`` weights: container reading, key mapping, and feature parity with timm."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

from helpers import Detector
from mvit_det import MViT, mvit_preset
from mvit_det.checkpoint import ArchitectureMismatchError, MViTCheckpointer, read_checkpoint

pytestmark = pytest.mark.numerics

# timm's classification mvitv2: LayerNorm eps 1e-6, no KV-stride doubling in the last blocks.
TIMM_EQUIVALENT = dict(norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=0.0)
TIMM_EQUIVALENT.update(attention_mode="global", double_kv_stride_in_last_blocks=False)


@pytest.fixture(scope="module")
def timm_tiny() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("mvitv2_tiny", pretrained=False).eval()


@pytest.fixture(scope="module")
def timm_files(timm_tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The three ways timm weights are distributed: .pth, HF-hub .bin and .safetensors."""
    folder = tmp_path_factory.mktemp("timm")
    state = timm_tiny.state_dict()
    files = {ext: folder / f"mvitv2_tiny.{ext}" for ext in ("pth", "bin", "safetensors")}
    torch.save(state, files["pth"])
    torch.save(state, files["bin"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    return files


def stage_features(model: MViT, x: torch.Tensor) -> List[torch.Tensor]:
    """Outputs of the last block of each stage (before the ``scale{n}_norm``), NCHW."""
    features: List[torch.Tensor] = []
    hooks = [
        model.blocks[i].register_forward_hook(
            lambda module, args, out: features.append(out.permute(0, 3, 1, 2))
        )
        for i, spec in enumerate(model.block_specs)
        if i + 1 == len(model.block_specs) or model.block_specs[i + 1].stage != spec.stage
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return features


@pytest.mark.parametrize("ext", ["pth", "bin", "safetensors"])
def test_containers_read_the_same(
    timm_tiny: nn.Module, timm_files: Dict[str, Path], ext: str
) -> None:
    ckpt = read_checkpoint(str(timm_files[ext]))
    assert ckpt.kind == "state_dict"
    reference = timm_tiny.state_dict()
    assert ckpt.state.keys() == reference.keys()
    assert all(torch.equal(ckpt.state[k], v) for k, v in reference.items())


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_features_match_timm(
    timm_tiny: nn.Module, timm_files: Dict[str, Path], attn_impl: str
) -> None:
    """Converted weights in pure global attention give timm's per-stage features (pre-norm)."""
    detector = Detector(**mvit_preset("T", **TIMM_EQUIVALENT, attn_impl=attn_impl)).eval()
    checkpointer = MViTCheckpointer(detector)
    checkpointer.load(str(timm_files["safetensors"]))
    report = checkpointer.last_report
    assert report.layout == "timm (staged)" and report.missing == [] and report.resized == []
    assert sorted(k for k, _ in report.dropped) == [
        "head.fc.bias",
        "head.fc.weight",
        "norm.bias",
        "norm.weight",
    ]

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = timm_tiny.forward_intermediates(x, intermediates_only=True)
    ours = stage_features(detector.backbone.bottom_up, x)
    for stage, (a, b) in enumerate(zip(ours, expected)):
        assert a.shape == b.shape
        rel_err = ((a - b).norm() / b.norm()).item()
        assert rel_err <= 1e-5, f"stage {stage + 2}: relative error {rel_err:.2e}"


def test_timm_weights_load_into_detection_model(timm_files: Dict[str, Path]) -> None:
    """The detection variant (hybrid windows, doubled KV stride) has the same tensor shapes."""
    detector = Detector(**mvit_preset("T"))
    checkpointer = MViTCheckpointer(detector)
    checkpointer.load(str(timm_files["pth"]))
    assert checkpointer.last_report.missing == [] and checkpointer.last_report.resized == []
    assert len(checkpointer.last_report.new) == 8  # the scale{2-5}_norm weights and biases


def tiny_timm(**cfg: object) -> MultiScaleVit:
    return MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, **cfg), img_size=64)


def test_class_token_variant_is_mapped(tmp_path: Path) -> None:
    """``*_cls`` models (the IN-21K weights): the class token is dropped and reported."""
    path = tmp_path / "cls.pth"
    torch.save(tiny_timm(use_cls_token=True).state_dict(), path)
    checkpointer = MViTCheckpointer(
        Detector(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3), img_size=64)
    )
    checkpointer.load(str(path))
    assert "cls_token" in dict(checkpointer.last_report.dropped)
    assert checkpointer.last_report.missing == []


def test_mlp_expansion_layout_is_refused(tmp_path: Path) -> None:
    """timm mvitv2_large (expand_attn=False) cannot be expressed by the detection backbone."""
    path = tmp_path / "large_in1k.pth"
    torch.save(tiny_timm(expand_attn=False).state_dict(), path)
    detector = Detector(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3))
    with pytest.raises(ArchitectureMismatchError, match="shortcut_proj_mlp.*expand_attn=True"):
        MViTCheckpointer(detector).load(str(path))
