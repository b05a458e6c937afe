#!/usr/bin/env python
"""Runs a trained detector on your own images, folders, globs or videos.

The logic is in mvit_det.tools.predict; `--help` for options."""

import sys

from mvit_det.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
