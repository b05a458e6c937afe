"""Exports a detector or its backbone to TorchScript or ONNX and checks the result against eager.

What works (see docs/tools.md):

- TorchScript tracing (``--format torchscript``), backbone or whole detector (through Detectron2's
  ``TracingAdapter``): for MViT the traced graph serves any input size and batch size, for ViL
  the export size.
- TorchScript scripting (``--format torchscript --script --what trunk``) of a backbone whose family
  compiles with ``torch.jit.script`` (MViT), alone.
- ONNX with the legacy exporter (``--format onnx --exporter legacy``), backbone or whole
  detector: for the export input size, or with ``--dynamic-size`` one graph for every input size
  (and batch size, for the backbone).
- ONNX with the dynamo exporter (``--exporter dynamo``), backbone: for the export input size, or
  with ``--dynamic-size`` for every size (and batch size).

``--dynamic-size`` exports with dynamic input axes and checks the file against eager at the export
size and at the ``--check-sizes`` (default: two other sizes derived from the export size, one of
them with a batch of 2 for the backbone); a difference above ``--tolerance`` or a size the file
cannot run is an error. ``--list-ops`` prints the ONNX operators of the graph (also recorded in
``export.json``).

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
  python tools/export.py --config mask_rcnn_mvitv2_t.py --weights model_final.pkl \\
      --format onnx --what model --dynamic-size --image-size 800x1067 --list-ops
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
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
from .loading import load_model, parse_hw, synthetic_input

__all__ = [
    "compare_outputs",
    "default_check_sizes",
    "detector_adapter",
    "dynamic_axes",
    "export_onnx",
    "export_torchscript",
    "main",
    "onnx_operators",
    "output_names",
    "run_onnx",
]

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter starts at opset 18
DEFAULT_TOLERANCE = 1e-3  # largest relative difference to eager that --dynamic-size accepts
# The graph input's name; its dynamic axes per export kind (see dynamic_axes).
INPUT_NAME = "images"
# Why the dynamo exporter cannot export the whole detector (what torch.export stops at).
DYNAMO_DETECTOR_ERROR = (
    "the dynamo ONNX exporter does not export the whole detector: torch.export stops in "
    "Detectron2's preprocessing, already at a fixed input size. ImageList.from_tensors computes "
    "the padding to the size divisibility from a tensor of image sizes, so torch.export sees the "
    "padded height and width as data-dependent (unbacked) sizes, and the first conv's stride "
    "check (are_strides_like_channels_last) raises GuardOnDataDependentSymNode. Use --exporter "
    "legacy (any input size with --dynamic-size), or --what backbone"
)


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


def dynamic_axes(what: str, output_names: Sequence[str]) -> Dict[str, Dict[int, str]]:
    """
    The dynamic axes of an export with ``--dynamic-size``, by graph input and output name, in
    the form of ``torch.onnx.export``'s ``dynamic_axes``.

    Args:
        what: "model" (the detector: one (3, H, W) image) or a backbone export ((N, 3, H, W)).
        output_names: the graph's output names.

    Returns:
        for the detector: ``images`` axes 1, 2 (``height``, ``width``) and axis 0 of every output
        but ``image_size`` (``detections``); for a backbone: ``images`` axes 0, 2, 3 (``batch``,
        ``height``, ``width``) and axes 0, 2, 3 of every feature map (``batch``,
        ``<name>_height``, ``<name>_width``).
    """
    if what == "model":
        axes = {INPUT_NAME: {1: "height", 2: "width"}}
        axes.update({name: {0: "detections"} for name in output_names if name != "image_size"})
        return axes
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in output_names})
    return axes


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str,
    exporter: str = "legacy",
    opset: int = DEFAULT_OPSET,
    output_names: Optional[Sequence[str]] = None,
    dynamic: Optional[Dict[str, Dict[int, str]]] = None,
) -> None:
    """
    Exports ``module`` to ONNX and writes it atomically: for the shape of ``example``, or with
    ``dynamic`` for any size along the dynamic axes.

    Args:
        module: a module of one tensor input.
        example: its example input.
        path: the ``.onnx`` file to write.
        exporter: "legacy" (TorchScript-based, ``dynamo=False``) or "dynamo" (torch.export).
        opset: ONNX opset version (the dynamo exporter uses at least :data:`DYNAMO_OPSET`).
        output_names: names of the graph outputs.
        dynamic: dynamic axes by input/output name (see :func:`dynamic_axes`), or None for a
            graph of the example's shape. The dynamo exporter takes those of the input as
            ``torch.export.Dim.DYNAMIC`` (the outputs' follow): give it an example whose
            dynamic sizes are not 1 (torch.export fixes a size of 1).

    Raises:
        ToolError: an unknown exporter; or, with ``dynamic``, ``torch.export`` fails or fixes a
            dynamic input axis (the message names the error or the axis; no fixed-size fallback).
    """
    if exporter not in EXPORTERS:
        raise ToolError(f"exporter {exporter!r} is not one of {EXPORTERS}")
    names = list(output_names) if output_names else None
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
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_axes=dynamic,
                )
            else:
                _export_dynamo(module, example, staged, opset, names, dynamic)
        if dynamic:
            _check_dynamic_input(staged, dynamic[INPUT_NAME], exporter)
        with open(staged, "rb") as f:
            data = f.read()
    atomic_write(path, lambda f: f.write(data))


def _export_dynamo(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str,
    opset: int,
    names: Optional[List[str]],
    dynamic: Optional[Dict[str, Dict[int, str]]],
) -> None:
    """The dynamo exporter's half of :func:`export_onnx` (writes ``path``)."""
    shapes = None
    if dynamic:
        shapes = ({axis: torch.export.Dim.DYNAMIC for axis in dynamic[INPUT_NAME]},)
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=max(opset, DYNAMO_OPSET),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=shapes,
            verbose=False,
        )
    except Exception as e:  # torch.export's errors have no common base class
        if not dynamic:
            raise
        raise ToolError(
            "torch.export cannot export with dynamic sizes (there is no fallback to a fixed "
            f"size): {_first_lines(e)}; export without --dynamic-size, or with --exporter legacy"
        ) from e
    program.save(path)


def _check_dynamic_input(path: str, axes: Dict[int, str], exporter: str) -> None:
    """
    Raises a ToolError if an axis that should be dynamic is a fixed number in the graph input
    of the ONNX file at ``path`` (an exporter that specialised it).
    """
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    fixed = [f"{axis} ({name})" for axis, name in axes.items() if not dims[axis].dim_param]
    if fixed:
        raise ToolError(
            f"the {exporter} exporter made input axes {', '.join(fixed)} fixed sizes instead of "
            "dynamic ones; export without --dynamic-size (one file per size)"
        )


def _first_lines(error: BaseException, lines: int = 12) -> str:
    """The start of an exception's message (torch.export's are pages long)."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return "\n".join(text[:lines]) + ("\n..." if len(text) > lines else "")


def onnx_operators(path: str) -> Dict[str, int]:
    """
    The operators of an ONNX file and how often each occurs, in the main graph, the subgraphs
    of control-flow nodes and the model's local functions (each counted where defined).

    Args:
        path: an ONNX file.

    Returns:
        ``{op: count}`` sorted by op; ops of another domain than the standard one are named
        ``domain::op`` (e.g. ``com.microsoft::...``).
    """
    import onnx

    model = onnx.load(path, load_external_data=False)
    counts: Dict[str, int] = {}

    def visit(nodes: Any) -> None:
        for node in nodes:
            name = (
                f"{node.domain}::{node.op_type}"
                if node.domain not in ("", "ai.onnx")
                else node.op_type
            )
            counts[name] = counts.get(name, 0) + 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g.node)
                for graph in attribute.graphs:
                    visit(graph.node)

    visit(model.graph.node)
    local = {(f.domain, f.name) for f in model.functions}
    for function in model.functions:
        visit(function.node)
    for domain, name in local:  # calls of local functions are not operators
        key = f"{domain}::{name}" if domain not in ("", "ai.onnx") else name
        counts.pop(key, None)
    return dict(sorted(counts.items()))


def default_check_sizes(size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """
    The sizes ``--dynamic-size`` checks besides the export size, when ``--check-sizes`` is not
    given: the transposed size (or, for a square, one 3/4 as wide) and a square between the two
    sides (plus 8, so that it differs from both).

    Args:
        size: (H, W) of the export's image.

    Returns:
        two (H, W) sizes.
    """
    h, w = size
    other = (w, h) if h != w else (h, max(32, 3 * w // 4))
    side = max(32, (h + w) // 2 + 8)
    return [other, (side, side)]


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
    dynamic_size: bool = False,
    check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    tolerance: float = DEFAULT_TOLERANCE,
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
        dynamic_size: export ONNX with dynamic axes (:func:`dynamic_axes`), and check the file
            (ONNX or TorchScript) at ``check_sizes`` too.
        check_sizes: (H, W) image sizes checked besides the export's with ``dynamic_size``;
            None for :func:`default_check_sizes`. A backbone export is checked at the first one
            with a batch of two images (with the dynamo exporter, which exports a batch of two,
            with one).
        tolerance: with ``dynamic_size``, the largest relative difference to eager accepted at
            any checked size.

    Returns:
        a report: file, format, the sizes (``requested_image_size``, ``input_size`` of the image
        before the model's padding, ``input_shape`` of the exported input), output names (the
        ONNX graph's too), relative differences, export time and file size; for ONNX the opset
        and operators; with ``dynamic_size`` the dynamic axes and the checks at other sizes.

    Raises:
        ToolError: an export that is not possible (the message says why), or with
            ``dynamic_size`` a checked size at which the file fails or differs by more than
            ``tolerance`` (the report is written first).
    """
    if fmt == "onnx" and exporter == "dynamo" and what == "model":
        raise ToolError(DYNAMO_DETECTOR_ERROR)
    if script and (fmt != "torchscript" or what in ("model", "backbone")):
        raise ToolError(
            "--script applies to --format torchscript --what trunk (or the family's name, e.g. "
            "--what mvit): Detectron2's necks and heads are exported by tracing, leave out --script"
        )
    backbone = what != "model"
    example, sizes = _example(loaded, image_size, backbone)
    if dynamic_size and fmt == "onnx" and exporter == "dynamo" and backbone:
        # torch.export fixes a dynamic size of 1: export a batch of two different images
        example = torch.cat([example, example.flip(-1)])
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
    axes = dynamic_axes(what, names) if dynamic_size and fmt == "onnx" else None
    started = time.perf_counter()
    run: Callable[[torch.Tensor], Sequence[Any]]
    if script:
        scripted = export_torchscript(module.backbone, example, path, script=True)

        def run(images: torch.Tensor) -> List[torch.Tensor]:
            features = scripted(images)  # a dict, as the eager backbone's
            return [features[name] for name in names]

    elif fmt == "torchscript":
        run = export_torchscript(module, example, path)
    else:
        export_onnx(module, example, path, exporter, opset, names, axes)
        run = partial(run_onnx, path)
    seconds = time.perf_counter() - started
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
        "export_seconds": round(seconds, 3),
        "file_bytes": os.path.getsize(path),
        "config": loaded.config_file,
    }
    if fmt == "onnx":
        report["opset"] = max(opset, DYNAMO_OPSET) if exporter == "dynamo" else opset
        report["operators"] = onnx_operators(path)
    failures: List[str] = []
    batch = example.shape[0] if backbone else 1
    if dynamic_size:
        report["dynamic_axes"] = axes
        report["checks"], failures = _check_sizes(
            loaded, module, run, sizes["input_size"], check_sizes, backbone, batch, tolerance
        )
        if any(e > tolerance or e != e for e in errors):  # a NaN fails too
            failures.insert(0, f"{'x'.join(map(str, sizes['input_size']))}: {errors}")
    atomic_write(
        os.path.join(output_dir, "export.json"),
        lambda f: f.write(json.dumps(report, indent=2).encode()),
    )
    if failures:
        raise ToolError(
            f"{path} does not give the eager outputs at every checked size (largest relative "
            f"difference per output, tolerance {tolerance:g}; see export.json): "
            + "; ".join(failures)
        )
    return report


def _check_sizes(
    loaded: LoadedModel,
    module: torch.nn.Module,
    run: Callable[[torch.Tensor], Sequence[Any]],
    export_size: Sequence[int],
    sizes: Optional[Sequence[Tuple[int, int]]],
    backbone: bool,
    export_batch: int,
    tolerance: float,
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """
    Runs the export at other input sizes and compares with eager.

    Args:
        loaded: the model (its preprocessing makes the inputs).
        module: the exported module, eager.
        run: runs the exported file.
        export_size: (H, W) of the export's image.
        sizes: the (H, W) image sizes, or None for :func:`default_check_sizes`.
        backbone: a backbone export ((N, 3, H, W) input).
        export_batch: the batch of the export's example; if 1, a backbone export is checked at
            the first size with a batch of two images.
        tolerance: the largest relative difference accepted.

    Returns:
        one record per size (``image_size``, ``input_shape``, ``max_relative_difference``) and
        the failures (size: reason).
    """
    records, failures = [], []
    wanted = list(sizes) if sizes else default_check_sizes((export_size[0], export_size[1]))
    for i, size in enumerate(wanted):
        images, _ = _example(loaded, tuple(size), backbone)
        if backbone and i == 0 and export_batch == 1:
            images = torch.cat([images, images.flip(-1)])  # a batch of two different images
        label = "x".join(map(str, size))
        with torch.no_grad():
            expected = list(module(images))
            try:
                errors = compare_outputs(run(images), expected)
            except ToolError as e:
                failures.append(f"{label}: {e}")
                errors = None
            except Exception as e:  # onnxruntime's and TorchScript's errors
                failures.append(f"{label}: the file does not run: {_first_lines(e, 3)}")
                errors = None
        if errors is not None and any(e > tolerance or e != e for e in errors):
            failures.append(f"{label}: {errors}")
        records.append(
            {
                "image_size": list(size),
                "input_shape": list(images.shape),
                "max_relative_difference": errors,
            }
        )
    return records, failures


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
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}; the dynamo exporter uses at least "
        f"{DYNAMO_OPSET})",
    )
    parser.add_argument(
        "--dynamic-size",
        action="store_true",
        help="ONNX: export with dynamic input height and width (and batch, for backbone "
        "exports); ONNX and TorchScript: check the file against eager at the export size and "
        "the --check-sizes",
    )
    parser.add_argument(
        "--check-sizes",
        type=_parse_sizes,
        default=None,
        metavar="HxW[,HxW...]",
        help="with --dynamic-size: the image sizes checked besides the export size (default: "
        "the transposed export size and a square between its sides)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="with --dynamic-size: the largest relative difference to eager accepted at every "
        f"checked size (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--list-ops", action="store_true", help="ONNX: print the operators of the exported graph"
    )
    parser.add_argument("--output", default="output/export", help="output folder")
    add_model_arguments(parser, weights_required=False)
    return parser.parse_args(argv)


def _parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``HxW[,HxW...]`` as a list of (H, W), for argparse."""
    return [parse_hw(part) for part in text.split(",") if part.strip()]


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
            args.dynamic_size,
            args.check_sizes,
            args.tolerance,
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
    print(f"export {report['export_seconds']:.1f} s, {report['file_bytes'] / 2**20:.1f} MiB")
    for check in report.get("checks", []):
        size = "x".join(map(str, check["image_size"]))
        worst = max(check["max_relative_difference"])
        print(f"checked at {size} (input shape {check['input_shape']}): largest {worst:.1e}")
    if args.list_ops:
        if "operators" not in report:
            print("--list-ops: the operators are listed for ONNX files", file=sys.stderr)
        else:
            print(f"ONNX operators (opset {report['opset']}), with their number of nodes:")
            for op, count in report["operators"].items():
                print(f"  {op} {count}")
    return 0
