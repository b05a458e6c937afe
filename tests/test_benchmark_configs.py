"""tools/benchmark.py finds the backbone wherever a config puts it: under an FPN
(``model.backbone.bottom_up``) or a simple feature pyramid (``model.backbone.net``)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mvit_det import MViT, ViL
from mvit_det.config.safe_yaml import load_lazy_config
from mvit_det.model_zoo import list_configs, resolve_config_file
from mvit_det.tools import benchmark

# The configs whose backbone is not at model.backbone.bottom_up, and where it is.
ELSEWHERE = {"retinanet_mvitv2_b_sfp.py": "model.backbone.net"}


@pytest.mark.parametrize("name", list_configs())
def test_every_shipped_config_has_its_backbone_found(name):
    cfg = load_lazy_config(resolve_config_file(name))
    found = benchmark.config_backbone(cfg)
    assert found.key == ELSEWHERE.get(name, "model.backbone.bottom_up")
    assert OmegaConf.select(cfg, found.key)._target_ in (MViT, ViL)
    assert found.target is (ViL if name.startswith("projects/ViL") else MViT)


def test_benchmark_runs_the_simple_feature_pyramid_config(tmp_path):
    args = benchmark.parse_args(
        ["--config", "retinanet_mvitv2_b_sfp.py", "--device", "cpu", "--dtype", "fp32"]
        + ["--batch", "1", "--tasks", "backbone", "--backbone-mode", "forward"]
        + ["--image-size", "64", "--iters", "1", "--warmup", "0", "--no-flops"]
        + ["--attn-impl", "eager", "--output", str(tmp_path / "b.json")]
    )
    models = benchmark.build_models(args)
    net = models["mvit_det"].backbone.net
    assert isinstance(net, MViT)
    assert {block.attn.attn_impl for block in net.blocks} == {"eager"}
    report = benchmark.run_benchmark(args)
    (row,) = report["results"]
    assert row["model"] == "mvit_det" and row["task"] == "backbone" and row["ms"] > 0
