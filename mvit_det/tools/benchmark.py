"""
Speed and memory of mvit_det (and, when importable, Detectron2's own MViT with identical weights;
or, with --compare-attn-impls, the attention cores of one model with identical weights).

Measures, for a config (of any backbone family, wherever the config puts the backbone), device
and dtype:
  backbone  backbone + FPN forward+backward (or forward only, --backbone-mode forward)
  train     a full training step (forward, backward, AdamW step) on a synthetic batch of real
            instances (boxes and masks)
  infer     inference latency on one image
as ms per iteration (median after warm-up; the models' calls take turns, so a drift in machine
speed affects all alike), images/s and peak memory (CUDA: the allocator's peak; CPU: the peak of
the bytes that tensors hold during one call, from the profiler's allocation events, and the
median over the timed calls of the process's peak resident memory beyond what was resident
before the call), eager and/or
under torch.compile (compile time reported), plus parameter counts and FLOPs (fvcore, with a
count for the fused attention op). Prints a table and writes JSON.

Examples:
  python tools/benchmark.py --config mask_rcnn_mvitv2_b.py --device cuda --dtype bf16
  python tools/benchmark.py --config mask_rcnn_mvitv2_t.py --device cpu --dtype fp32 \\
      --tasks backbone --backbone-mode forward --image-size 512 --batch 1
  python tools/benchmark.py --config projects/ViL/configs/COCO/mask_rcnn_vil_s_1x.py \\
      --device cpu --dtype fp32 --tasks backbone --image-size 800x1216 --batch 1 \\
      --compare-attn-impls sdpa,eager
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import inspect
import json
import os
import statistics
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ..config.lazy import BackboneNode, backbone_nodes
from ..config.safe_yaml import load_lazy_config
from ..model_zoo import resolve_config_file
from ..modeling.backbones import BackboneFamily, families, family_of, find_backbone
from ..utils.file_io import atomic_write
from .loading import parse_hw

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def attn_impl_names() -> Tuple[str, ...]:
    """The attention cores of every registered family, "auto" first."""
    names = ["auto"]
    for family in families():
        names += [n for n in family.attention.names() if n not in names]
    return tuple(names)


def _families_with_cores() -> str:
    """Which family has which cores, for --help."""
    return "; ".join(f"{f.title}: {', '.join(f.attention.cores)}" for f in families())


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="mask_rcnn_mvitv2_t.py", help="shipped config name or path")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    p.add_argument("--tasks", default="backbone,train,infer", help="comma-separated subset")
    p.add_argument(
        "--backbone-mode", choices=["forward", "forward_backward"], default="forward_backward"
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--image-size",
        type=partial(parse_hw, square=True),
        default=(1024, 1024),
        help="N (square) or HxW, for backbone/train",
    )
    p.add_argument("--infer-size", default="800x1216", help="HxW of the inference image")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--attn-impl", choices=attn_impl_names(), default="auto")
    p.add_argument(
        "--compare-attn-impls",
        default="",
        metavar="IMPL,IMPL,...",
        help="measure one model per attention core (identical weights) instead of ours vs the "
        f"reference; the cores of the config's backbone ({_families_with_cores()})",
    )
    p.add_argument(
        "--reference",
        choices=["auto", "off"],
        default="auto",
        help="also measure the reference implementation of the config's backbone (Detectron2's "
        "MViT for MViT) with the same weights when it is given",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    p.add_argument(
        "--profile",
        action="store_true",
        help="where the time goes: the operators with the most self time in one profiled call "
        "per model and task (CPU), printed and written to the JSON",
    )
    p.add_argument("--output", default="output/benchmark.json")
    args = p.parse_args(argv)
    unknown = set(args.tasks.split(",")) - {"backbone", "train", "infer"}
    if unknown:
        p.error(f"unknown task(s) {sorted(unknown)}; choose from backbone, train, infer")
    for option, value, minimum in (
        ("--batch", args.batch, 1),
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value < minimum:
            p.error(f"{option} must be >= {minimum}, got {value}")
    if any(side % 32 for side in args.image_size):
        p.error(
            f"--image-size must be a positive multiple of 32 (the backbone's output stride), "
            f"got {'x'.join(map(str, args.image_size))}"
        )
    try:
        parse_hw(args.infer_size)
    except argparse.ArgumentTypeError:
        p.error(
            f"--infer-size must be HxW with positive integers, e.g. 800x1216, got "
            f"{args.infer_size!r}"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda was asked for but CUDA is not available; use --device cpu")
    unknown = set(filter(None, args.compare_attn_impls.split(","))) - set(attn_impl_names())
    if unknown:
        p.error(f"unknown attention core(s) {sorted(unknown)}; choose from {attn_impl_names()}")
    return args  # fmt: skip


def config_backbone(cfg: Any) -> BackboneNode:
    """
    The node of a LazyConfig that builds its backbone, wherever the config puts it.

    Raises:
        ValueError: no backbone of a registered family, or several.
    """
    nodes = backbone_nodes(cfg)
    if len(nodes) != 1:
        titles = " or ".join(f.title for f in families())
        found = ", ".join(n.key for n in nodes) or "none"
        raise ValueError(
            f"the benchmark needs one {titles} backbone in the config's model; found {found}"
        )
    return nodes[0]


def check_core(node: BackboneNode, impl: str) -> None:
    """
    Raises:
        ValueError: the backbone's family has no attention core ``impl``.
    """
    if impl not in node.family.attention.names():
        having = " or ".join(f.title for f in families() if impl in f.attention.names())
        raise ValueError(f"attention core {impl!r} exists for {having} backbones only")


def build_models(
    args: argparse.Namespace, references: Optional[Mapping[str, type]] = None
) -> Dict[str, torch.nn.Module]:
    """
    Ours, and the reference with identical weights when given; or, with --compare-attn-impls,
    one model per attention core, named after it.

    Args:
        args: the command line.
        references: family name -> an independent implementation of that family's backbone
            with the same arguments and parameter names, built in place of the config's backbone
            when it is of that family (tools/benchmark.py passes ``{"mvit": Detectron2's MViT}``
            where this Detectron2 build has it).
    """
    cfg = load_lazy_config(resolve_config_file(args.config))
    backbone = config_backbone(cfg)
    impls = [i for i in args.compare_attn_impls.split(",") if i]
    for impl in impls or [args.attn_impl]:
        check_core(backbone, impl)
    if impls:
        models: Dict[str, torch.nn.Module] = {}
        for impl in impls:
            backbone.node.attn_impl = impl
            torch.manual_seed(0)
            models[impl] = instantiate(cfg.model).to(args.device)
        return models
    backbone.node.attn_impl = args.attn_impl
    torch.manual_seed(0)
    models = {"mvit_det": instantiate(cfg.model).to(args.device)}
    reference = (references or {}).get(backbone.family.name) if args.reference == "auto" else None
    if reference is not None:
        ref_cfg = copy.deepcopy(cfg)
        ref_node = config_backbone(ref_cfg).node
        # Arguments the reference does not have (with our defaults, which it hard-codes).
        for key in set(inspect.signature(backbone.target).parameters) - set(
            inspect.signature(reference).parameters
        ):
            ref_node.pop(key, None)
        ref_node._target_ = reference
        if ref_node.get("use_act_checkpoint"):
            ref_node.use_act_checkpoint = False  # the reference needs fairscale for it
        ref_model = instantiate(ref_cfg.model).to(args.device)
        ref_model.load_state_dict(models["mvit_det"].state_dict(), strict=True)
        models["reference"] = ref_model
    return models


def synthetic_batch(batch: int, size: Tuple[int, int], num_classes: int, device: str) -> List[dict]:
    """Images with 4 real instances each: boxes, classes and rectangle-free (elliptic) masks."""
    g = torch.Generator().manual_seed(0)
    inputs = []
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    scale = torch.tensor([h, w], dtype=torch.float32)
    for _ in range(batch):
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        masks, boxes = [], []
        for _ in range(4):
            cy, cx = (torch.rand(2, generator=g) * 0.6 + 0.2) * scale
            ry, rx = (torch.rand(2, generator=g) * 0.15 + 0.05) * scale
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(mask)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.randint(0, num_classes, (4,), generator=g)
        inst.gt_masks = BitMasks(torch.stack(masks))
        inputs.append({"image": image.to(device), "instances": inst.to(device),
                       "height": h, "width": w})  # fmt: skip
    return inputs


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_call(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def measure(
    workloads: Dict[str, Tuple[Callable[[], Any], int]], args: argparse.Namespace
) -> Dict[str, Dict[str, Any]]:
    """
    Times the same workload of several models, their calls taking turns (A, B, A, B, ...), so that
    a drift in machine speed (other jobs, clocks) affects every model alike.

    Args:
        workloads: model name -> (function running one iteration, images per iteration).
        args: the command line (device, warmup, iters).

    Returns:
        model name -> median ms per call, images/s, peak memory (CUDA: of a timed call; CPU: see
        :func:`profile_cpu_call`, and the median peak resident memory of the timed calls, see
        :func:`reset_resident_peak`), the time of the first call (compilation included) and with
        ``--profile`` the top operators (CPU), or an error for a model whose call failed.
    """
    cuda = args.device.startswith("cuda")
    rows: Dict[str, Dict[str, Any]] = {}
    running = {}
    for name, (fn, _) in workloads.items():
        try:
            rows[name] = {"first_call_s": round(timed_call(fn, args.device), 2)}
            for _ in range(max(args.warmup - 1, 0)):
                fn()
            running[name] = fn
        except Exception as err:  # a failing variant is a result, not a crash
            rows[name] = {"error": error_text(err)}
    times: Dict[str, List[float]] = {name: [] for name in running}
    peaks = {name: 0 for name in running}
    resident: Dict[str, List[int]] = {name: [] for name in running}
    for _ in range(args.iters):
        for name, fn in running.items():
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = None if cuda else reset_resident_peak()
            times[name].append(timed_call(fn, args.device) * 1000)
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            elif base is not None:
                resident[name].append(max(_proc_status_bytes("VmHWM") - base, 0))
    if not cuda:
        for name, fn in running.items():
            peaks[name], top_ops = profile_cpu_call(fn)
            if args.profile:
                rows[name]["top_ops"] = top_ops
    for name in running:
        ms = statistics.median(times[name])
        rows[name].update(
            ms=round(ms, 2),
            images_per_s=round(workloads[name][1] * 1000 / ms, 2),
            peak_mem_gib=round(peaks[name] / 2**30, 3),
        )
        if resident[name]:
            rows[name]["peak_rss_gib"] = round(statistics.median(resident[name]) / 2**30, 3)
    return rows


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (e.g. "VmRSS", "VmHWM") in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def reset_resident_peak() -> Optional[int]:
    """
    Prepares the measurement of one call's peak resident memory (CPU; Linux): hands the heap
    memory that is free back to the system (glibc's ``malloc_trim``, where there is one), then
    resets the process's resident high-water mark (``/proc/self/clear_refs``). After the call,
    VmHWM minus the returned value is the most memory that was resident at once beyond what was
    resident before (tensors, allocator caches, library buffers).

    Returns:
        the resident bytes now, or None where the high-water mark cannot be reset.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory may stay resident and the figure is a lower bound
    try:
        base = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return base


def backbone_family(
    model: torch.nn.Module,
) -> Tuple[Optional[BackboneFamily], Optional[torch.nn.Module]]:
    """The family of the model's backbone and the backbone; (None, None) where it has none."""
    found = find_backbone(model)
    return (family_of(found[1]), found[1]) if found else (None, None)


def auto_attn_choice(model: torch.nn.Module, device: str) -> Optional[Dict[str, str]]:
    """What ``attn_impl="auto"`` of the model's backbone runs on ``device`` in each situation its
    family's rule tells apart (ViL: training, inference); None where the rule is one choice."""
    family, _ = backbone_family(model)
    if family is None or family.attention.auto_cases is None:
        return None
    return dict(family.attention.auto_cases(not device.startswith("cuda")))


def profile_cpu_call(fn: Callable[[], Any], num_ops: int = 12) -> Tuple[int, List[list]]:
    """
    Runs one more call under the profiler (slowed down by it).

    Returns:
        the peak of the bytes that tensors allocated during the call hold at the same time (the
        memory it needs beyond what existed before; from the allocation and free events in time
        order), and the ``num_ops`` operators with the most self CPU time as
        [name, % of the call, calls].
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:  # fmt: skip
        fn()
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # allocations inside an op are its own; frees outside any op are "[memory]" events
        held += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, held)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    top = [[e.key, round(100 * e.self_cpu_time_total / total, 1), e.count] for e in ops]
    return peak, top[:num_ops]


def attention_tensor_bytes(model: torch.nn.Module, core: str, args: argparse.Namespace) -> int:
    """Bytes of the largest tensor that the attention core ``core`` of the model's backbone
    builds at the benchmark's image size and batch (``attention_bytes`` of its family; 0 where
    the family gives none)."""
    family, backbone = backbone_family(model)
    if family is None or family.attention_bytes is None:
        return 0
    element = 2 if args.dtype in ("bf16", "fp16") else 4
    return family.attention_bytes(backbone, core, args.image_size, args.batch, element)


def dense_attention_bytes(model: torch.nn.Module, args: argparse.Namespace) -> int:
    """:func:`attention_tensor_bytes` of the dense core (0 for backbones without one)."""
    return attention_tensor_bytes(model, "dense", args)


def dense_cores_that_cannot_fit(
    models: Dict[str, torch.nn.Module], args: argparse.Namespace
) -> Dict[str, str]:
    """
    The models named after an attention core (--compare-attn-impls) whose largest attention
    tensors cannot fit into the CPU memory available (a few of them live at once: 3 in a
    forward pass, 6 with a backward), with the reason; running them would only end in the
    out-of-memory killer.
    """
    available = None if args.device.startswith("cuda") else available_memory_bytes()
    tasks = args.tasks.split(",")
    backward = "train" in tasks or ("backbone" in tasks and args.backbone_mode != "forward")
    skipped = {}
    for name, model in models.items():
        needed = attention_tensor_bytes(model, name, args)
        if available is not None and (6 if backward else 3) * needed > available:
            skipped[name] = (
                f"not run: one (tokens x tokens) tensor of the {name} core is "
                f"{needed / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB are available"
            )
    return skipped


def available_memory_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def autocast(args: argparse.Namespace):
    if args.dtype == "fp32":
        return nullcontext()
    return torch.autocast(args.device.split(":")[0], dtype=DTYPES[args.dtype])


def task_fns(model: torch.nn.Module, args: argparse.Namespace, compiled: bool) -> Dict[str, Any]:
    """The three workloads for one model, as (fn, images) pairs."""
    backbone = torch.compile(model.backbone) if compiled else model.backbone
    size, batch = args.image_size, args.batch
    fns: Dict[str, Any] = {}
    x = torch.randn(batch, 3, *size, device=args.device)

    def backbone_step() -> None:
        if args.backbone_mode == "forward":
            with torch.no_grad(), autocast(args):
                backbone(x)
            return
        with autocast(args):
            loss = sum(f.float().mean() for f in backbone(x).values())
        loss.backward()

    fns["backbone"] = (backbone_step, batch)

    num_classes = getattr(model, "roi_heads", model).num_classes  # R-CNN or RetinaNet
    batch_inputs = synthetic_batch(batch, size, num_classes, args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=args.dtype == "fp16" and args.device != "cpu")

    def train_step() -> None:
        model.train()
        with EventStorage(), autocast(args):
            losses = model(batch_inputs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    fns["train"] = (train_step, batch)

    h, w = parse_hw(args.infer_size)
    image = torch.randint(0, 256, (3, h, w), device=args.device).float()

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), autocast(args):
            model([{"image": image, "height": h, "width": w}])

    fns["infer"] = (infer_step, 1)
    if compiled:
        model.backbone = backbone  # the detector runs the compiled backbone
    return fns


def count_flops(backbone: torch.nn.Module, args: argparse.Namespace) -> Optional[float]:
    """GFLOPs (multiply-adds, fvcore convention) of one backbone+FPN forward at the image size."""
    from fvcore.nn import FlopCountAnalysis

    x = torch.randn(1, 3, *args.image_size, device=args.device)
    backbone.eval()
    analysis = FlopCountAnalysis(backbone, x)  # counts the fused attention: see mvit_det.analysis
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return round(analysis.total() / 1e9, 2)


def max_feature_difference(models: Dict[str, torch.nn.Module], args: argparse.Namespace) -> float:
    """Largest relative difference of the backbone+FPN outputs, ours vs reference, in fp32."""
    x = torch.randn(1, 3, *args.image_size, device=args.device)
    with torch.no_grad():
        ours = models["mvit_det"].backbone.eval()(x)
        ref = models["reference"].backbone.eval()(x)
    return max(((ours[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def main(argv: Optional[List[str]] = None, references: Optional[Mapping[str, type]] = None) -> int:
    """
    Runs the benchmark of the command line, prints the table and writes the JSON report.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        references: family name -> the reference implementation to compare with (see
            :func:`build_models`; tools/benchmark.py passes Detectron2's MViT when that build has
            one); None measures ours only.

    Returns:
        the exit status.
    """
    run_benchmark(parse_args(argv), references)
    return 0


def run_benchmark(
    args: argparse.Namespace, references: Optional[Mapping[str, type]] = None
) -> Dict[str, Any]:
    """
    Measures every task and compile mode of ``args`` for our model and the reference.

    Args:
        args: parsed command line (see :func:`parse_args`).
        references: see :func:`build_models`.

    Returns:
        the report (also written to ``args.output``).
    """
    tasks = args.tasks.split(",")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    models = build_models(args, references)
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    )
    report: Dict[str, Any] = {
        "config": args.config,
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "image_size": args.image_size,
        "backbone_mode": args.backbone_mode,
        "attn_impl": args.attn_impl,
        "params_m": {},
        "gflops_backbone_fpn": {},
        "results": [],
    }
    skipped = dense_cores_that_cannot_fit(models, args)
    for name, model in models.items():
        report["params_m"][name] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        report["params_m"][f"{name}.backbone"] = round(
            sum(p.numel() for p in model.backbone.parameters()) / 1e6, 2
        )
        if not args.no_flops and name not in skipped:
            report["gflops_backbone_fpn"][name] = count_flops(model.backbone, args)
    if "reference" in models:
        report["max_rel_feature_diff_fp32"] = max_feature_difference(models, args)
    auto_choice = auto_attn_choice(next(iter(models.values())), args.device)
    if auto_choice:
        report["auto_attn_impl"] = auto_choice

    for compiled in modes:
        workloads = {
            name: task_fns(model, args, compiled)
            for name, model in models.items()
            if name not in skipped
        }
        for task in tasks:
            rows = measure({name: fns[task] for name, fns in workloads.items()}, args)
            rows.update({name: {"error": reason} for name, reason in skipped.items()})
            for name, row in rows.items():
                row.update(model=name, task=task, compiled=compiled)
                report["results"].append(row)
                print(format_row(row), flush=True)
        if compiled:
            for name, model in models.items():
                if name not in skipped:
                    model.backbone = model.backbone._orig_mod  # back to eager

    add_ratios(report)
    print(format_table(report))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write(args.output, lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {args.output}")
    return report


def add_ratios(report: Dict[str, Any]) -> None:
    """ours / reference for time and memory, per task and compile mode."""
    index = {(r["model"], r["task"], r["compiled"]): r for r in report["results"] if "ms" in r}
    ratios = []
    for (model, task, compiled), ours in index.items():
        ref = index.get(("reference", task, compiled)) or index.get(("reference", task, False))
        if model != "mvit_det" or ref is None:
            continue
        entry = {"task": task, "compiled": compiled, "speedup": round(ref["ms"] / ours["ms"], 2)}
        if ours["peak_mem_gib"] and ref["peak_mem_gib"]:
            entry["memory_ratio"] = round(ours["peak_mem_gib"] / ref["peak_mem_gib"], 2)
        ratios.append(entry)
    report["ours_vs_reference"] = ratios


def format_row(row: Dict[str, Any]) -> str:
    label = f"{row['model']:<10} {row['task']:<9} {'compiled' if row['compiled'] else 'eager':<8}"
    if "error" in row:
        return f"{label} ERROR {row['error']}"
    mem = f"{row['peak_mem_gib']:.2f} GiB" if row["peak_mem_gib"] is not None else "n/a"
    rss = f"rss {row['peak_rss_gib']:.2f} GiB  " if row.get("peak_rss_gib") is not None else ""
    return (
        f"{label} {row['ms']:>9.1f} ms {row['images_per_s']:>7.2f} img/s  peak {mem:<10} "
        f"{rss}first call {row['first_call_s']:.1f} s"
    )


def format_table(report: Dict[str, Any]) -> str:
    size = "x".join(str(side) for side in report["image_size"])
    lines = [
        "",
        f"device {report['device']} | torch {report['torch']} | {report['dtype']} | batch "
        f"{report['batch']} at {size}px | backbone {report['backbone_mode']}",
        f"params (M): {report['params_m']}",
        f"backbone+FPN GFLOPs (multiply-adds) at {size}px: " f"{report['gflops_backbone_fpn']}",
    ]
    if "max_rel_feature_diff_fp32" in report:
        lines.append(f"max relative feature difference vs reference (fp32): "
                     f"{report['max_rel_feature_diff_fp32']:.2e}")  # fmt: skip
    if "auto_attn_impl" in report:
        cases = ", ".join(f"{case} -> {core}" for case, core in report["auto_attn_impl"].items())
        lines.append(f"attn_impl auto on {report['device']}: {cases}")
    lines += [format_row(r) for r in report["results"]]
    for r in report["results"]:
        if "top_ops" in r:
            ops = ", ".join(f"{name} {share}%" for name, share, _ in r["top_ops"])
            lines.append(f"where the time goes, {r['model']} {r['task']}: {ops}")
    for r in report.get("ours_vs_reference", []):
        mem = f", memory x{r['memory_ratio']}" if "memory_ratio" in r else ""
        mode = "compiled" if r["compiled"] else "eager"
        lines.append(f"ours vs reference: {r['task']:<9} {mode:<8} speedup x{r['speedup']}{mem}")
    return "\n".join(lines)
