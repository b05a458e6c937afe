#!/usr/bin/env python
"""The embedded demo: a small MViTv2 Mask R-CNN learns the synthetic shapes dataset on the CPU.

The logic is in mvit_det.tools.demo; `--help` for options."""

import sys

from mvit_det.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
