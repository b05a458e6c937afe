"""mvit_det.model_zoo.get and the torch.hub entry points of hubconf.py: every entry builds the
model it names (tiny ones fully, large ones on the meta device: shapes and parameter counts),
weights from a file or a URL served here load as saved, pinned or not; unknown names fail."""

import functools
import hashlib
import http.server
import importlib.util
import logging
import threading
from contextlib import contextmanager

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import GeneralizedRCNN, RetinaNet

from mvit_det import MViT, ViL, get_family, model_zoo
from mvit_det.checkpoint import ChecksumMismatchError
from mvit_det.modeling.backbones import PretrainedWeights, find_backbone

from helpers import REPO

HUB = str(REPO)

# docs/architecture.md, "Sizes": C, depth, heads of stage 2, last block of each stage.
MVIT_SIZES = {
    "mvitv2_t": (96, 10, 1, (0, 2, 7, 9)),
    "mvitv2_s": (96, 16, 1, (0, 2, 13, 15)),
    "mvitv2_b": (96, 24, 1, (1, 4, 20, 23)),
    "mvitv2_l": (144, 48, 2, (1, 7, 43, 47)),
    "mvitv2_h": (192, 80, 3, (3, 11, 71, 79)),
}
# docs/vil.md: channels, block pairs and heads of each stage.
VIL_SIZES = {
    "vil_t": ((48, 96, 192, 384), (1, 1, 9, 1), (1, 3, 3, 6)),
    "vil_s": ((96, 192, 384, 768), (1, 2, 8, 1), (3, 3, 6, 12)),
    "vil_m": ((96, 192, 384, 768), (1, 4, 16, 1), (3, 3, 6, 12)),
    "vil_b": ((96, 192, 384, 768), (1, 8, 24, 1), (3, 3, 6, 12)),
    "vil_mw": ((192, 384, 512, 768), (1, 2, 8, 1), (3, 6, 8, 12)),
    "vil_bw": ((192, 384, 768, 1024), (1, 2, 8, 1), (3, 6, 12, 16)),
}
# Parameters (M, two decimals) of the detectors, as docs/recipes.md and docs/vil.md give them.
DETECTOR_PARAMS = {
    "mask_rcnn_mvitv2_t": 43.68,
    "mask_rcnn_mvitv2_s": 54.38,
    "mask_rcnn_mvitv2_b": 70.98,
    "mask_rcnn_mvitv2_l": 232.94,
    "mask_rcnn_mvitv2_h": 685.99,
    "cascade_mask_rcnn_mvitv2_t": 75.85,
    "cascade_mask_rcnn_mvitv2_s": 86.54,
    "cascade_mask_rcnn_mvitv2_b": 103.15,
    "cascade_mask_rcnn_mvitv2_l": 265.11,
    "cascade_mask_rcnn_mvitv2_h": 718.16,
    "mask_rcnn_mvitv2_t_3x": 43.68,
    "cascade_mask_rcnn_mvitv2_t_3x": 75.85,
    "cascade_mask_rcnn_mvitv2_s_3x": 86.54,
    "cascade_mask_rcnn_mvitv2_b_3x": 103.15,
    "cascade_mask_rcnn_mvitv2_b_in21k_3x": 103.15,
    "cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep": 265.11,
    "cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x": 718.16,
    "cascade_mask_rcnn_mvitv2_b_in21k_100ep": 103.15,
    "cascade_mask_rcnn_mvitv2_l_in21k_50ep": 265.11,
    "cascade_mask_rcnn_mvitv2_h_in21k_36ep": 718.16,
    "lvis_cascade_mask_rcnn_mvitv2_b_in21k_100ep": 106.89,
    "lvis_cascade_mask_rcnn_mvitv2_l_in21k_50ep": 268.85,
    "lvis_cascade_mask_rcnn_mvitv2_h_in21k_50ep": 721.90,
    **{f"mask_rcnn_vil_{s}_{x}": p for s, p in zip("tsmb", (26.43, 44.17, 59.29, 75.31)) for x in ("1x", "3x")},
    **{f"retinanet_vil_{s}_{x}": p for s, p in zip("tsmb", (16.22, 34.83, 49.96, 65.98)) for x in ("1x", "3x")},
}  # fmt: skip
TINY_DETECTORS = ("mask_rcnn_mvitv2_shapes", "mask_rcnn_vil_shapes")


def _expected_detectors() -> dict:
    """Model name -> config file, from the config folders: the file name without .py, with
    lvis_ in front for published/LVIS/."""
    found = {}
    roots = [REPO / "configs"] + sorted((REPO / "projects").glob("*/configs"))
    for root in roots:
        for path in root.rglob("*.py"):
            if "common" in path.relative_to(root).parts:
                continue
            name = ("lvis_" if path.parent.name == "LVIS" else "") + path.stem
            assert name not in found
            found[name] = path
    return found


def _load_hubconf():
    spec = importlib.util.spec_from_file_location(
        "mvit_det_hubconf_under_test", REPO / "hubconf.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hubconf = _load_hubconf()


def _entry_points(module) -> set:
    """What torch.hub offers: the public callables of hubconf (torch.hub.list's rule)."""
    return {n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")}


def _shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hub_offers_every_backbone_preset_and_every_shipped_detector():
    detectors = _expected_detectors()
    expected = set(MVIT_SIZES) | set(VIL_SIZES) | set(detectors)
    assert _entry_points(hubconf) == expected
    assert set(model_zoo.list_models()) == expected
    for name in ("mask_rcnn_mvitv2_t", "cascade_mask_rcnn_mvitv2_b", "mask_rcnn_vil_s_1x"):
        assert name in expected
    assert set(TINY_DETECTORS) <= set(detectors) and set(DETECTOR_PARAMS) <= set(detectors)
    assert {"torch", "detectron2"} <= set(hubconf.dependencies)
    # each entry point describes its model
    assert "MViT backbone, preset 'B'" in hubconf.mvitv2_b.__doc__
    assert "MViTv2_B_in1k.pyth" in hubconf.mvitv2_b.__doc__
    assert "no published weights are recorded" in hubconf.vil_bw.__doc__
    assert "shipped config mask_rcnn_mvitv2_t.py" in hubconf.mask_rcnn_mvitv2_t.__doc__


@pytest.mark.parametrize("name", sorted(MVIT_SIZES) + sorted(VIL_SIZES))
def test_every_backbone_entry_builds_its_preset(name):
    model = torch.hub.load(HUB, name, source="local", device="meta")
    assert not model.training
    if name in MVIT_SIZES:
        dim, depth, heads, last = MVIT_SIZES[name]
        reference = dict(embed_dim=dim, depth=depth, num_heads=heads, last_block_indexes=last)
        with torch.device("meta"):
            expected = MViT(**reference)
        assert isinstance(model, MViT) and len(model.blocks) == depth
        channels = [dim, 2 * dim, 4 * dim, 8 * dim]
    else:
        dims, depths, heads = VIL_SIZES[name]
        with torch.device("meta"):
            expected = ViL(embed_dims=dims, depths=depths, num_heads=heads)
        assert isinstance(model, ViL) and model.depths == depths
        channels = list(dims)
    assert [s.channels for s in model.output_shape().values()] == channels
    assert _shapes(model) == _shapes(expected)


def test_backbones_are_the_detection_configs_backbones_and_their_weights():
    """Each backbone with a detection config equals that config's backbone (same parameters),
    and its recorded weights are the ImageNet weights that config starts from."""
    pairs = {f"mvitv2_{s}": f"mask_rcnn_mvitv2_{s}.py" for s in "tsblh"}
    pairs.update({f"vil_{s}": f"projects/ViL/configs/COCO/mask_rcnn_vil_{s}_1x.py" for s in "tsmb"})
    for name, config in pairs.items():
        cfg = model_zoo.get_config(config)
        with torch.device("meta"):
            expected = instantiate(cfg.model.backbone.bottom_up)
        model = model_zoo.get(name, device="meta")
        assert _shapes(model) == _shapes(expected), name
        assert model_zoo.pretrained_weights(name).url == cfg.train.init_checkpoint, name
    assert model_zoo.pretrained_weights("vil_mw") is None
    assert model_zoo.pretrained_weights("mask_rcnn_mvitv2_t") is None


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    return model


def _assert_state_equal(model: torch.nn.Module, state: dict) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("name", ["mvitv2_t", "vil_t"])
def test_tiny_backbones_build_fully_and_load_weights_from_a_file(name, tmp_path):
    saved = _perturbed(torch.hub.load(HUB, name, source="local"))
    state = {k: v.clone() for k, v in saved.state_dict().items()}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    fresh = model_zoo.get(name)
    assert any(not torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    loaded = torch.hub.load(HUB, name, source="local", weights=str(path))
    _assert_state_equal(loaded, state)
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out, expected = loaded(image), saved.eval()(image)
    assert out.keys() == {"scale2", "scale3", "scale4", "scale5"}
    for key in out:
        assert torch.equal(out[key], expected[key])
    # the backbone of a Detectron2 checkpoint of a detector loads into it too
    detector_file = tmp_path / "detector.pth"
    torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in state.items()}}, detector_file)
    _assert_state_equal(model_zoo.get(name, weights=str(detector_file)), state)


@pytest.mark.parametrize("name", TINY_DETECTORS)
def test_tiny_detectors_build_fully_run_and_load_weights(name, tmp_path):
    model = _perturbed(getattr(hubconf, name)())
    assert isinstance(model, GeneralizedRCNN) and not model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "detector.pth"
    torch.save({"model": state}, path)
    loaded = torch.hub.load(HUB, name, source="local", weights=str(path))
    _assert_state_equal(loaded, state)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = loaded([{"image": image}])[0]["instances"]
        expected = model([{"image": image}])[0]["instances"]
    assert out.image_size == (96, 128) and len(expected) > 0
    assert torch.equal(out.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(out.scores, expected.scores)


def test_every_detector_entry_builds_on_the_meta_device():
    families = {"mvit": MViT, "vil": ViL}
    for name, path in sorted(_expected_detectors().items()):
        model = getattr(hubconf, name)(device="meta")
        assert isinstance(model, (GeneralizedRCNN, RetinaNet)), name
        assert isinstance(model, RetinaNet) == ("retinanet" in name), name
        _, backbone = find_backbone(model)
        assert isinstance(backbone, families["vil" if "vil" in name else "mvit"]), name
        assert all(p.device.type == "meta" for p in model.parameters()), name
        if name in DETECTOR_PARAMS:
            assert round(_count(model) / 1e6, 2) == DETECTOR_PARAMS[name], name


@contextmanager
def _warnings_of(name: str):
    """The warning messages logged by the logger ``name`` meanwhile (a handler of its own: the
    training tool's logging setup may stop propagation to the root logger)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@contextmanager
def _serving(folder):
    """An HTTP server on 127.0.0.1 serving the files of ``folder``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_pretrained_weights_download_pinned_or_not(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    state = {k: v.clone() for k, v in _perturbed(model_zoo.get("vil_t")).state_dict().items()}
    torch.save(state, served / "vil_t.pth")
    digest = hashlib.sha256((served / "vil_t.pth").read_bytes()).hexdigest()
    family = get_family("vil")
    with _serving(served) as base:
        url = f"{base}/vil_t.pth"
        # unpinned: downloaded, loaded, and a warning says it is not pinned
        monkeypatch.setitem(family.pretrained, "T", PretrainedWeights(url, "test weights"))
        with _warnings_of("mvit_det.model_zoo") as warnings:
            model = torch.hub.load(HUB, "vil_t", source="local", pretrained=True)
        _assert_state_equal(model, state)
        assert any("not pinned" in m and url in m for m in warnings), warnings
        assert list((tmp_path / "cache").rglob("vil_t.pth"))  # through the download cache
        # pinned by the right digest: loads without the warning
        pinned = PretrainedWeights(url, "test weights", sha256=digest)
        monkeypatch.setitem(family.pretrained, "T", pinned)
        with _warnings_of("mvit_det.model_zoo") as warnings:
            _assert_state_equal(model_zoo.get("vil_t", pretrained=True), state)
        assert not any("not pinned" in m for m in warnings), warnings
        assert "pinned by SHA-256 " + digest in model_zoo.describe("vil_t")
        # pinned by another digest: refused
        wrong = PretrainedWeights(url, "test weights", sha256="0" * 64)
        monkeypatch.setitem(family.pretrained, "T", wrong)
        with pytest.raises(ChecksumMismatchError, match="0" * 64):
            model_zoo.get("vil_t", pretrained=True)


def test_unknown_names_and_wrong_arguments_are_refused():
    with pytest.raises(ValueError, match="no model 'mvitv2_x'") as info:
        model_zoo.get("mvitv2_x")
    for listed in ("mvitv2_t", "vil_bw", "mask_rcnn_mvitv2_t", "mask_rcnn_vil_s_1x"):
        assert listed in str(info.value)
    with pytest.raises(ValueError, match="no model"):
        model_zoo.describe("mvitv2_x")
    with pytest.raises(RuntimeError, match="Cannot find callable mvitv2_x in hubconf"):
        torch.hub.load(HUB, "mvitv2_x", source="local")  # torch.hub's own message
    with pytest.raises(ValueError, match="no published weights are recorded for 'mask_rcnn"):
        model_zoo.get("mask_rcnn_mvitv2_t", device="meta", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        model_zoo.get("mvitv2_t", "w.pth", pretrained=True)
    with pytest.raises(ValueError, match="backbone: it takes its arguments as keywords"):
        model_zoo.get("mvitv2_t", device="meta", opts=["a=1"])
    with pytest.raises(ValueError, match="detector: unexpected arguments"):
        model_zoo.get("mask_rcnn_mvitv2_t", device="meta", embed_dim=8)
    with pytest.raises(ValueError, match="meta device"):
        model_zoo.get("mvitv2_t", "w.pth", device="meta")
    # a config path or shipped name is a detector too; backbone arguments reach the preset
    model = model_zoo.get("published/mask_rcnn_mvitv2_t_3x.py", device="meta")
    assert round(_count(model) / 1e6, 2) == 43.68
    tiny = model_zoo.get("mvitv2_t", device="meta", out_features=("scale5",))
    assert list(tiny.output_shape()) == ["scale5"]
