"""
Converts MViT weights (official .pyth, timm, Detectron2 .pkl/.pth, plain state dicts) into a
Detectron2-ready checkpoint for an mvit_det model, and prints a report of the keys.

Examples:
    python tools/convert_checkpoint.py MViTv2_T_in1k.pyth mvitv2_t_in1k.pkl --model T
    python tools/convert_checkpoint.py model.safetensors mvitv2_b.pkl --model B
    python tools/convert_checkpoint.py detectron2://ImageNetPretrained/mvitv2/MViTv2_B_in21k.pyth \\
        mvitv2_b_in21k.pkl --model configs/cascade_mask_rcnn_mvitv2_b.py

Files are read without running code from them: a file that pickles Python objects besides
weights is refused unless --trust-checkpoint is given. A URL may end in #sha256=<hex> (or pass
--sha256) to pin the file's digest.

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
from detectron2.config import LazyConfig, instantiate

from ..checkpoint import CheckpointError, adapt_state_dict, find_mvit, nonfinite_tensors
from ..checkpoint import read_checkpoint, save_checkpoint
from ..model_zoo import resolve_config_file
from ..modeling import MVIT_PRESETS, MViT, mvit_preset

# Where mvit_det's (and Detectron2's) detectors keep the MViT: FPN(bottom_up=MViT).
PRESET_PREFIX = "backbone.bottom_up."


def build_target(model: str) -> Tuple[str, MViT]:
    """
    Builds the backbone whose names and shapes the output must have.

    Args:
        model: a size ("T", "S", "B", "L", "H"), or a LazyConfig file or shipped config name
            whose ``model`` holds an MViT (e.g. configs/mask_rcnn_mvitv2_t.py).

    Returns:
        (name prefix of the MViT in the detector, the MViT).
    """
    if model.upper() in MVIT_PRESETS:
        return PRESET_PREFIX, MViT(**mvit_preset(model))
    try:
        config_file = resolve_config_file(model)
    except FileNotFoundError as e:
        raise ValueError(f"--model {model!r} is not a size ({', '.join(MVIT_PRESETS)}); {e}")
    detector: nn.Module = instantiate(LazyConfig.load(config_file).model)
    found = find_mvit(detector)
    if found is None:
        raise ValueError(f"the model of config {model!r} has no MViT backbone")
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
        help=f"target size ({', '.join(MVIT_PRESETS)}), or a LazyConfig file or shipped config "
        "name of the detector",
    )
    parser.add_argument("--sha256", help="expected SHA-256 of the input (64 hex digits)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle Python objects of any kind from the input; only for files from a trusted "
        "source, since unpickling can run arbitrary code",
    )
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
        prefix, mvit = build_target(args.model)
        ckpt = read_checkpoint(args.input, trust=args.trust_checkpoint, sha256=args.sha256)
        state, report = adapt_state_dict(
            ckpt.state,
            mvit.state_dict(),
            prefix,
            source=ckpt.describe(),
            target=f"MViT ({args.model}, {mvit.num_layers} blocks)",
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
