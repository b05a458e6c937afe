"""Exports a detector or its backbone to TorchScript or ONNX and checks the result against eager.

What works (see docs/tools.md):

- TorchScript tracing (``--format torchscript``), backbone or whole detector (through Detectron2's
  ``TracingAdapter``): for MViT the traced graph serves any input size and batch size, for ViL
  the export size.
- TorchScript scripting (``--format torchscript --script --what trunk``) of a backbone whose family
  compiles with ``torch.jit.script`` (MViT), alone.
- ONNX with the legacy exporter (``--format onnx --exporter legacy``), backbone or whole
  detector: a valid graph for the input size it was exported at.
- ONNX with the dynamo exporter (``--exporter dynamo``), backbone: for the export input size.

``--what`` picks the detector (``model``), its backbone with the neck (``backbone``: FPN or other),
or the backbone alone (``trunk``; or the name of its family, e.g. ``mvit``, which also checks
that the backbone is of that family).

The example input is one random image: with ``--image-size HxW`` the model is given an HxW image
exactly (no test resize), else a 480x640 image after the config's test resize. Every export is
run once on it and compared with the eager model; the input size, the output names (also the
names of the ONNX graph's outputs) and the largest relative difference per output are printed
and stored in ``export.json`` beside the file.

Examples:
  python tools/export.py --config mask_rcnn_mvitv2_t.py --weights model_final.pkl \\
      --format torchscript --what model --output output/export
  python tools/export.py --config mask_rcnn_mvitv2_t.py --weights model_final.pkl \\
      --format onnx --exporter legacy --what backbone --image-size 1024x1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.modeling import GeneralizedRCNN

from ..modeling.backbones import families, family_of, find_backbone, get_family
from ..utils.file_io import atomic_write
from .loading import LoadedModel, ToolError, add_image_size_argument, add_model_arguments
from .loading import load_model, synthetic_input

__all__ = [
    "compare_outputs",
    "detector_adapter",
    "export_onnx",
    "export_torchscript",
    "main",
    "output_names",
    "run_onnx",
]

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 17


def what_choices() -> List[str]:
    """What ``--what`` accepts: the detector, its backbone with the neck, the backbone alone
    ("trunk"), or the backbone alone by the name of its family."""
    return ["model", "backbone", "trunk"] + [family.name for family in families()]


class BackboneOutputs(torch.nn.Module):
    """A backbone with its dict of feature maps returned as a tuple, in ``output_shape()`` order
    (exporters and ONNX want positional outputs)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        """
        Args:
            backbone: a Detectron2 backbone (MViT, FPN, ...).
        """
        super().__init__()
        self.backbone = backbone
        self.names = list(backbone.output_shape())

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(N, 3, H, W) normalised images -> the feature maps, in :attr:`names` order."""
        features = self.backbone(images)
        return tuple(features[name] for name in self.names)


def detector_adapter(model: torch.nn.Module, image: torch.Tensor) -> TracingAdapter:
    """
    The detector as a function of one (3, H, W) image tensor, for tracing.

    Args:
        model: a Detectron2 meta-architecture in eval mode.
        image: an example (3, H, W) image (pixel values in the model's input format).

    Returns:
        Detectron2's TracingAdapter; for R-CNN models its outputs are the instances before
        resizing to the original image (boxes, classes, 28x28 mask probabilities, scores, image
        size; see :func:`output_names`), as Detectron2's ``export_model.py`` exports them.
    """

    def rcnn_inference(model: GeneralizedRCNN, inputs: List[Dict[str, Any]]) -> Any:
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    inference = rcnn_inference if isinstance(model, GeneralizedRCNN) else None
    return TracingAdapter(model, [{"image": image}], inference).eval()


def output_names(schema: Any) -> List[str]:
    """
    Names of the flattened outputs of a TracingAdapter, from its ``outputs_schema``: the
    Instances fields in Detectron2's order (sorted), then ``image_size``; a list of one element
    or a dict of one key adds no prefix, other lists their index and dicts their key.

    Args:
        schema: ``adapter.outputs_schema``, set by the adapter's first call.

    Returns:
        e.g. ``["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]`` for an R-CNN.
    """

    def names(node: Any, prefix: str) -> List[str]:
        join = lambda part: f"{prefix}.{part}" if prefix else str(part)  # noqa: E731
        if isinstance(node, InstancesSchema):
            fields = [n for key, sub in zip(node.keys, node.schemas) for n in names(sub, join(key))]
            return fields + [join("image_size")]
        if isinstance(node, DictSchema):
            if len(node.keys) == 1:
                return names(node.schemas[0], prefix)
            return [n for key, sub in zip(node.keys, node.schemas) for n in names(sub, join(key))]
        if isinstance(node, ListSchema):
            if len(node.schemas) == 1:
                return names(node.schemas[0], prefix)
            return [n for i, sub in enumerate(node.schemas) for n in names(sub, join(i))]
        return [prefix or "output"]

    return names(schema, "")


def export_torchscript(
    module: torch.nn.Module, example: torch.Tensor, path: str, script: bool = False
) -> Any:
    """
    Traces (or scripts) ``module`` and saves it (atomically).

    Args:
        module: a module of one tensor input (e.g. :class:`BackboneOutputs`, a TracingAdapter,
            or, to script, an MViT).
        example: its example input (for tracing).
        path: the ``.ts`` file to write.
        script: ``torch.jit.script`` instead of ``torch.jit.trace``.

    Returns:
        the TorchScript module.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        if script:
            compiled = torch.jit.script(module)
        else:
            compiled = torch.jit.trace(module, (example,), strict=False, check_trace=False)
    atomic_write(path, lambda f: torch.jit.save(compiled, f))
    return compiled


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str,
    exporter: str = "legacy",
    opset: int = DEFAULT_OPSET,
    output_names: Optional[Sequence[str]] = None,
) -> None:
    """
    Exports ``module`` to ONNX for the shape of ``example`` and writes it atomically.

    Args:
        module: a module of one tensor input.
        example: its example input.
        path: the ``.onnx`` file to write.
        exporter: "legacy" (TorchScript-based, ``dynamo=False``) or "dynamo" (torch.export).
        opset: ONNX opset version.
        output_names: names of the graph outputs.
    """
    if exporter not in EXPORTERS:
        raise ToolError(f"exporter {exporter!r} is not one of {EXPORTERS}")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        staged = os.path.join(tmp, "model.onnx")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporters
            if exporter == "legacy":
                torch.onnx.export(
                    module,
                    (example,),
                    staged,
                    dynamo=False,
                    opset_version=opset,
                    input_names=["images"],
                    output_names=list(output_names) if output_names else None,
                )
            else:
                program = torch.onnx.export(
                    module,
                    (example,),
                    dynamo=True,
                    opset_version=max(opset, 18),  # the dynamo exporter starts at opset 18
                    input_names=["images"],
                    output_names=list(output_names) if output_names else None,
                    verbose=False,
                )
                program.save(staged)
        with open(staged, "rb") as f:
            data = f.read()
    atomic_write(path, lambda f: f.write(data))


def run_onnx(path: str, images: torch.Tensor) -> List[np.ndarray]:
    """Runs an exported ONNX file with onnxruntime (CPU) on ``images``."""
    try:
        import onnxruntime
    except ImportError:
        raise ToolError(
            "onnxruntime is not installed; pip install 'mvit_det[export]' (or onnxruntime)"
        ) from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})


def compare_outputs(actual: Sequence[Any], expected: Sequence[torch.Tensor]) -> List[float]:
    """
    Largest difference of each output, relative to the largest magnitude of the eager output.

    Raises:
        ToolError: a different number of outputs or a different shape.
    """
    if len(actual) != len(expected):
        raise ToolError(f"the export gives {len(actual)} outputs, eager {len(expected)}")
    errors = []
    for got, want in zip(actual, expected):
        got = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
        if tuple(got.shape) != tuple(want.shape):
            raise ToolError(f"export output shape {tuple(got.shape)} != eager {tuple(want.shape)}")
        got, want = got.double(), want.double()
        scale = want.abs().max().item() if want.numel() else 0.0
        diff = (got - want).abs().max().item() if want.numel() else 0.0
        errors.append(diff / scale if scale > 0 else diff)
    return errors


def _example(
    loaded: LoadedModel, image_size: Optional[Tuple[int, int]], backbone: bool
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """A random image (see :func:`~mvit_det.tools.loading.synthetic_input`): (3, H, W) pixels for
    the detector, or the normalised, padded (1, 3, H', W') batch for the backbone; and the sizes
    to record."""
    model_input, record = synthetic_input(loaded, image_size)
    if not backbone:
        return model_input["image"].float(), record
    with torch.no_grad():
        return loaded.model.preprocess_image([model_input]).tensor, record


def export(
    loaded: LoadedModel,
    fmt: str,
    what: str,
    image_size: Optional[Tuple[int, int]],
    output_dir: str,
    exporter: str = "legacy",
    opset: int = DEFAULT_OPSET,
    script: bool = False,
) -> Dict[str, Any]:
    """
    Exports, runs the export on the example input and compares it with eager.

    Args:
        loaded: the model.
        fmt: "torchscript" or "onnx".
        what: "model" (the detector), "backbone" (backbone + neck), "trunk" (the backbone alone)
            or a family's name (the backbone alone, which must be of that family).
        image_size: (H, W) of the example image the model gets, exactly; None for a 480x640
            image after the config's test resize.
        output_dir: folder of the exported file.
        exporter: ONNX exporter, "legacy" or "dynamo".
        opset: ONNX opset.
        script: TorchScript by scripting (the backbone alone, of a family that scripts) instead
            of tracing.

    Returns:
        a report: file, format, the sizes (``requested_image_size``, ``input_size`` of the image
        before the model's padding, ``input_shape`` of the exported input), output names (the
        ONNX graph's too) and relative differences.
    """
    if fmt == "onnx" and exporter == "dynamo" and what == "model":
        raise ToolError(
            "the dynamo ONNX exporter does not export the whole detector (its detections are "
            "data-dependent); use --exporter legacy, or --what backbone"
        )
    if script and (fmt != "torchscript" or what in ("model", "backbone")):
        raise ToolError(
            "--script applies to --format torchscript --what trunk (or the family's name, e.g. "
            "--what mvit): Detectron2's necks and heads are exported by tracing, leave out --script"
        )
    example, sizes = _example(loaded, image_size, what != "model")
    names: List[str] = []
    if what == "model":
        module: torch.nn.Module = detector_adapter(loaded.model, example)
    elif what == "backbone":
        module = BackboneOutputs(loaded.model.backbone).eval()
        names = module.names
    else:
        module = BackboneOutputs(_trunk(loaded, what, script)).eval()
        names = module.names
    with torch.no_grad():
        expected = list(module(example))
    if what == "model":
        names = output_names(module.outputs_schema)  # set by the adapter's call
    os.makedirs(output_dir, exist_ok=True)
    suffix = "ts" if fmt == "torchscript" else "onnx"
    path = os.path.join(output_dir, f"{what}.{suffix}")
    run: Callable[[torch.Tensor], Sequence[Any]]
    if script:
        scripted = export_torchscript(module.backbone, example, path, script=True)

        def run(images: torch.Tensor) -> List[torch.Tensor]:
            features = scripted(images)  # a dict, as the eager backbone's
            return [features[name] for name in names]

    elif fmt == "torchscript":
        run = export_torchscript(module, example, path)
    else:
        export_onnx(module, example, path, exporter, opset, names)
        run = partial(run_onnx, path)
    with torch.no_grad():
        errors = compare_outputs(run(example), expected)
    report = {
        "file": path,
        "format": fmt,
        "exporter": exporter if fmt == "onnx" else "script" if script else "trace",
        "what": what,
        **sizes,
        "input_shape": list(example.shape),
        "outputs": names,
        "max_relative_difference": errors,
        "config": loaded.config_file,
    }
    atomic_write(
        os.path.join(output_dir, "export.json"),
        lambda f: f.write(json.dumps(report, indent=2).encode()),
    )
    return report


def _trunk(loaded: LoadedModel, what: str, script: bool) -> torch.nn.Module:
    """
    The backbone of the detector without its neck, for ``--what trunk`` or a family's name.

    Raises:
        ToolError: no backbone of a registered family (of the named one), or ``script`` for a
            family that does not script.
    """
    wanted = None if what == "trunk" else get_family(what)
    found = find_backbone(loaded.model, None if wanted is None else wanted.backbone)
    if found is None:
        kind = wanted.title if wanted else " or ".join(f.title for f in families())
        raise ToolError(f"{loaded.config_file} has no {kind} to export")
    backbone = found[1]
    family = family_of(backbone)
    if script and not family.scriptable:
        scripted = ", ".join(f.title for f in families() if f.scriptable)
        raise ToolError(
            f"{family.title} does not compile with torch.jit.script (backbones that do: "
            f"{scripted}); export it by tracing (leave out --script)"
        )
    return backbone


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--exporter", choices=EXPORTERS, default="legacy", help="for onnx")
    parser.add_argument(
        "--what",
        choices=what_choices(),
        default="model",
        help="the detector, its backbone (with the FPN or other neck), or the backbone alone "
        "(trunk, or the name of its family: mvit, ...)",
    )
    parser.add_argument(
        "--script",
        action="store_true",
        help="torch.jit.script instead of trace (the backbone alone: --what trunk)",
    )
    add_image_size_argument(parser)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--output", default="output/export", help="output folder")
    add_model_arguments(parser, weights_required=False)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """
    The command line: exports, checks, prints the report.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 bad arguments.
    """
    args = parse_args(argv)
    try:
        loaded = load_model(
            args.config,
            args.weights,
            args.device,
            args.opts,
            trust_checkpoint=args.trust_checkpoint,
            trust_config=args.trust_config,
        )
        if not args.weights:
            print("warning: no --weights: exporting the initialisation", file=sys.stderr)
        report = export(
            loaded,
            args.format,
            args.what,
            args.image_size,
            args.output,
            args.exporter,
            args.opset,
            args.script,
        )
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors = ", ".join(
        f"{name} {e:.1e}" for name, e in zip(report["outputs"], report["max_relative_difference"])
    )
    h, w = report["input_size"]
    how = "--image-size" if report["requested_image_size"] else "480x640 after the test resize"
    print(
        f"wrote {report['file']} for a {h}x{w} image ({how}; exported input shape "
        f"{report['input_shape']}); largest relative difference to eager per output: {errors}"
    )
    return 0
