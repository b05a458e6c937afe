"""
Converts the weights of a backbone family - MViT (official .pyth, timm, Detectron2 .pkl/.pth,
plain state dicts), ViL (published classification and detection checkpoints), or any registered
family - into a Detectron2-ready checkpoint for an mvit_det model, and prints a report of the
keys.

Examples:
  python tools/convert_checkpoint.py MViTv2_T_in1k.pyth mvitv2_t_in1k.pkl --model T
  python tools/convert_checkpoint.py model.safetensors mvitv2_b.pkl --model B
  python tools/convert_checkpoint.py detectron2://ImageNetPretrained/mvitv2/MViTv2_B_in21k.pyth \\
      mvitv2_b_in21k.pkl --model configs/cascade_mask_rcnn_mvitv2_b.py
  python tools/convert_checkpoint.py small1281_relative/model_best.pth vil_s_in1k.pth \\
      --model vil_s --bias-table bilinear

Files are read without running code from them: a file that pickles Python objects besides
weights is refused unless --trust-checkpoint is given, and a LazyConfig .yaml given as --model is
read safely unless --trust-config is given (a .py LazyConfig is Python code and runs). A URL may
end in #sha256=<hex> (or pass --sha256) to pin the file's digest.

Exit status: 0 on success, 1 when backbone keys are missing, 2 when the input cannot be read or
does not fit the model, --model is unknown, or the output cannot be written. Nothing is written
unless the status is 0, and the output appears whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

import torch.nn as nn
from detectron2.config import instantiate

from ..checkpoint import CheckpointError, adapt_backbone_state_dict
from ..checkpoint import nonfinite_tensors, read_checkpoint, save_checkpoint
from ..config.safe_yaml import UnsafeConfigError, add_trust_config_argument, load_lazy_config
from ..model_zoo import resolve_config_file
from ..modeling.backbones import families, find_backbone
from .loading import add_trust_checkpoint_argument

# Where mvit_det's (and Detectron2's) detectors keep the backbone: FPN(bottom_up=backbone).
PRESET_PREFIX = "backbone.bottom_up."


def size_names() -> List[str]:
    """The sizes ``--model`` accepts: those of every registered family."""
    return [size for family in families() for size in family.size_names]


def build_target(model: str, trust_config: bool = False) -> Tuple[str, nn.Module]:
    """
    Builds the backbone whose names and shapes the output must have.

    Args:
        model: a size of a registered family (MViTv2: "T", "S", "B", "L", "H"; ViL: "vil_t",
            "vil_s", "vil_m", "vil_b", "vil_mw", "vil_bw"), or a LazyConfig file (``.py`` or
            ``.yaml``) or shipped config name whose ``model`` holds such a backbone (e.g.
            configs/mask_rcnn_mvitv2_t.py).
        trust_config: read a LazyConfig ``.yaml`` with YAML's full loader.

    Returns:
        (name prefix of the backbone in the detector, the backbone).

    Raises:
        ValueError: an unknown size or config, an unsafe YAML config, no backbone of a
            registered family in it.
    """
    for family in families():
        if family.accepts_size(model):
            return PRESET_PREFIX, family.backbone(**family.preset(model))
    try:
        config_file = resolve_config_file(model)
    except FileNotFoundError as e:
        raise ValueError(f"--model {model!r} is not a size ({', '.join(size_names())}); {e}")
    try:
        detector: nn.Module = instantiate(load_lazy_config(config_file, trust_config).model)
    except UnsafeConfigError as e:
        raise ValueError(str(e)) from None
    found = find_backbone(detector)
    if found is None:
        titles = " or ".join(family.title for family in families())
        raise ValueError(f"the model of config {model!r} has no {titles} backbone")
    return found


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="checkpoint file or URL (detectron2://, https://)")
    parser.add_argument("output", help="output file: .pkl (Detectron2 model zoo) or .pth")
    parser.add_argument(
        "--model",
        required=True,
        help=f"target size ({', '.join(size_names())}), or a LazyConfig file or shipped config "
        "name of the detector",
    )
    for family in families():
        for option in family.weight_options:
            parser.add_argument(
                option.flag,
                dest=option.name,
                choices=list(option.choices),
                default=option.default,
                help=option.help,
            )
    parser.add_argument("--sha256", help="expected SHA-256 of the input (64 hex digits)")
    add_trust_checkpoint_argument(parser)
    add_trust_config_argument(parser)
    return parser.parse_args(argv)


def check_output_path(output: str) -> None:
    """
    Checks, before any work, that the output can be written.

    Args:
        output: the output file.

    Raises:
        ValueError: naming the problem (extension, missing or read-only folder, a directory).
    """
    if os.path.isdir(output):
        raise ValueError(f"output {output!r} is a directory; give a file name inside it")
    if not output.endswith((".pkl", ".pth")):
        raise ValueError(f"output {output!r} must end with .pkl or .pth")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ValueError(f"the folder of output {output!r} does not exist: create {folder!r}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"the folder of output {output!r} is not writable")


def main(argv: Optional[List[str]] = None) -> int:
    """
    Runs the conversion.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        the exit status.
    """
    args = parse_args(argv)
    try:
        check_output_path(args.output)
        prefix, backbone = build_target(args.model, args.trust_config)
        ckpt = read_checkpoint(args.input, trust=args.trust_checkpoint, sha256=args.sha256)
        state, report = adapt_backbone_state_dict(
            ckpt.state,
            backbone,
            prefix,
            source=ckpt.describe(),
            target=f"{type(backbone).__name__} ({args.model}, {backbone.num_layers} blocks)",
            **{o.name: getattr(args, o.name) for f in families() for o in f.weight_options},
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    if report.missing:
        print(
            f"error: {len(report.missing)} backbone tensors are missing from the input; "
            f"{args.output} was not written",
            file=sys.stderr,
        )
        return 1
    nonfinite = nonfinite_tensors(state)
    if nonfinite:
        print(
            f"warning: {len(nonfinite)} tensors hold NaN or Inf values: "
            f"{', '.join(nonfinite[:5])}{' ...' if len(nonfinite) > 5 else ''}",
            file=sys.stderr,
        )
    try:
        save_checkpoint(state, args.output)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(state)} tensors to {args.output}")
    return 0
