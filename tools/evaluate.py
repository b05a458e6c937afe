#!/usr/bin/env python
"""COCO AP of several configs + weights on one dataset, as one table.

The logic is in mvit_det.tools.evaluate; `--help` for options."""

import sys

from mvit_det.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
