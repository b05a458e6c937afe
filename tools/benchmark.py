#!/usr/bin/env python
"""Speed and memory of mvit_det (and, when importable, Detectron2's own MViT with identical weights).

The logic is in mvit_det.tools.benchmark; `--help` for options."""

import sys

from mvit_det.tools.benchmark import main


def references():
    """The reference implementations of the comparison, per backbone family: Detectron2's own
    MViT where this Detectron2 build has it (the package itself never imports it)."""
    try:
        from detectron2.modeling.backbone.mvit import MViT
    except ImportError:
        return {}
    return {"mvit": MViT}


if __name__ == "__main__":
    sys.exit(main(references=references()))
