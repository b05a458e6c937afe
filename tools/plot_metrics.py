#!/usr/bin/env python
"""Draws the losses, learning rate and evaluation AP of a training run from its metrics.json.

The logic is in mvit_det.tools.plot_metrics; `--help` for options."""

import sys

from mvit_det.tools.plot_metrics import main

if __name__ == "__main__":
    sys.exit(main())
