#!/usr/bin/env python
"""Exports a detector or its backbone to TorchScript or ONNX and checks the result against eager.

The logic is in mvit_det.tools.export; `--help` for options."""

import sys

from mvit_det.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
