#!/usr/bin/env python
"""Converts MViT weights (official .pyth, timm, Detectron2 .pkl/.pth, plain state dicts) into a

The logic is in mvit_det.tools.convert_checkpoint; `--help` for options."""

import sys

from mvit_det.tools.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
