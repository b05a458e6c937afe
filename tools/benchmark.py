#!/usr/bin/env python
"""Speed and memory of mvit_det (and, when importable, Detectron2's own MViT with identical weights).

The logic is in mvit_det.tools.benchmark; `--help` for options."""

import sys

from mvit_det.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
