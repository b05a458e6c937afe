#!/usr/bin/env python
"""Converts the weights of a backbone family (MViT, ViL, ...) into a Detectron2-ready checkpoint.

The logic is in mvit_det.tools.convert_checkpoint; `--help` for options."""

import sys

from mvit_det.tools.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
