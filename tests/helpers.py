"""Helpers shared by the tests: tiny model sizes, a stand-in detector, error measures, gradient
comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple

import torch
import torch.nn as nn

from mvit_det import MViT, build_mvit_fpn

if TYPE_CHECKING:
    from mvit_det.tools.export import BackboneOutputs

REPO = Path(__file__).resolve().parents[1]

# Images per split of the shapes dataset in tests: enough to train a few iterations and evaluate.
TINY_SIZES = {"train": 8, "val": 4}

# A 5-block MViT with all four stages, windows, global blocks and stage transitions.
TINY_MVIT = dict(embed_dim=16, depth=5, num_heads=1, last_block_indexes=(0, 2, 3, 4))

# A 5-pair ViL with 0, 1 and 2 global tokens, several heads and windows that do not tile the maps.
TINY_VIL = dict(
    embed_dims=(16, 24, 32, 48),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 3),
    num_global_tokens=(1, 2, 1, 0),
    window=3,
)


def register_renumbered_shapes_val(name: str, folder: Path) -> Tuple[Path, Dict[str, Any]]:
    """
    The annotations of ``shapes_val`` with the category ids 1, 2, 3 renumbered 11, 2, 7 (neither
    0..K-1 nor in increasing order in the file), written to ``folder/renumbered.json`` and
    registered as the COCO dataset ``name`` over the same images; not loaded.

    Returns:
        the JSON file and its data.
    """
    from detectron2.data import MetadataCatalog

    from mvit_det.data import register_coco_dataset

    val = MetadataCatalog.get("shapes_val")
    with open(val.json_file) as f:
        data = json.load(f)
    new_ids = {1: 11, 2: 2, 3: 7}
    for category in data["categories"]:
        category["id"] = new_ids[category["id"]]
    data["categories"].sort(key=lambda c: -c["id"])
    for annotation in data["annotations"]:
        annotation["category_id"] = new_ids[annotation["category_id"]]
    json_file = folder / "renumbered.json"
    json_file.write_text(json.dumps(data))
    register_coco_dataset(name, str(json_file), val.image_root)
    return json_file, data


class Detector(nn.Module):
    """Stands in for GeneralizedRCNN: the MViT lives at ``backbone.bottom_up``, as in the configs."""

    def __init__(self, **mvit_kwargs: object) -> None:
        super().__init__()
        self.backbone = build_mvit_fpn(MViT(**mvit_kwargs))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def assert_grads_close(
    actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], tol: float
) -> None:
    """
    Per-parameter relative error of gradients, each against its own scale.

    Each parameter's error is measured against the largest gradient of that parameter or, for
    parameters whose true gradient vanishes (a key-norm bias shifts every logit of a query
    equally, so its gradient is rounding noise), against a thousandth of the largest gradient of
    the model: noise is never compared with noise.
    """
    floor = 1e-3 * max(g.double().abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        scale = max(grad.double().abs().max().item(), floor)
        error = (actual[name].double() - grad.double()).abs().max().item() / scale
        assert error <= tol, f"{name}: relative gradient error {error:.3g} > {tol:g}"


def forward_backward(
    model: nn.Module, x: torch.Tensor
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Outputs and parameter gradients of a fixed random linear functional of the outputs."""
    model.zero_grad()
    out = model(x)
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(f.shape, generator=generator) for f in out.values()]
    sum((f.float() * w).sum() for f, w in zip(out.values(), weights)).backward()
    module = getattr(model, "_orig_mod", model)  # a torch.compile wrapper's parameters
    return out, {n: p.grad.clone() for n, p in module.named_parameters()}


def normwise_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in fp64."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def gradient_errors(actual: dict, expected: dict) -> dict:
    """Norm-wise relative error of each parameter's gradient. Parameters whose true gradient
    vanishes (RMS below a thousandth of the largest parameter's RMS: e.g. a key-norm bias
    shifts every logit of a query equally) are left out: their low-precision gradient is
    rounding noise, and comparing noise with noise depends on the CPU's kernels."""
    rms = {n: g.double().pow(2).mean().sqrt().item() for n, g in expected.items()}
    floor = 1e-3 * max(rms.values())
    return {n: normwise_error(actual[n], g) for n, g in expected.items() if rms[n] > floor}


def assert_each_gradient_as_accurate(
    errors: Dict[str, float], baseline: Dict[str, float], factor: float, floor: float
) -> None:
    """
    Per-parameter accuracy against a baseline: each parameter's gradient error (from
    :func:`gradient_errors`) is at most ``factor`` times the baseline's error for the same
    parameter, or ``floor`` (a few roundings of the low-precision dtype, relative to that
    parameter's own gradient norm), whichever is larger.

    Args:
        errors: name -> norm-wise relative gradient error of the method under test.
        baseline: name -> the same for the baseline method (the same parameters).
        factor: allowed ratio of the two errors.
        floor: error always allowed (the baseline may be accurate by chance).
    """
    assert errors.keys() == baseline.keys()
    for name, err in errors.items():
        bound = max(factor * baseline[name], floor)
        assert (
            err <= bound
        ), f"{name}: gradient error {err:.3g} > {bound:.3g} (baseline {baseline[name]:.3g})"


# ------------------------------------------------------------------ export tests


def tiny_mvit_fpn(attn_impl: str) -> "BackboneOutputs":
    """MViT + FPN with windows, global blocks, stage transitions and non-zero rel-pos tables,
    wrapped for export (outputs as a tuple)."""
    from mvit_det.tools.export import BackboneOutputs

    torch.manual_seed(0)
    bottom_up = MViT(
        embed_dim=16,
        depth=5,
        num_heads=1,
        last_block_indexes=(0, 2, 3, 4),
        adaptive_window_size=16,
        rel_pos_zero_init=False,
        attn_impl=attn_impl,
    )
    return BackboneOutputs(build_mvit_fpn(bottom_up, out_channels=32)).eval()


def tiny_vil_fpn(attn_impl: str) -> "BackboneOutputs":
    """ViL (chunks of 3, global tokens, non-zero bias tables) + FPN, wrapped for export."""
    from detectron2.modeling.backbone import FPN
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    from mvit_det import ViL
    from mvit_det.tools.export import BackboneOutputs

    torch.manual_seed(0)
    bottom_up = ViL(**TINY_VIL, attn_impl=attn_impl)
    for name, p in bottom_up.named_parameters():
        if "relative_position_bias" in name:
            torch.nn.init.normal_(p, std=0.5)  # published tables are not zero
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=list(bottom_up.output_shape()),
        out_channels=32,
        top_block=LastLevelMaxPool(),
    )
    return BackboneOutputs(fpn).eval()


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor from a TorchScript (tensor) or onnxruntime (numpy array) output."""
    import numpy as np

    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
