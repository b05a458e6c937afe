#!/usr/bin/env python
"""FLOPs, parameters, activations and structure of a detector or its backbone, per module.

The logic is in mvit_det.tools.analyze; `--help` for options."""

import sys

from mvit_det.tools.analyze import main

if __name__ == "__main__":
    sys.exit(main())
