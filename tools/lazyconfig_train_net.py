#!/usr/bin/env python
"""Train or evaluate an mvit_det LazyConfig, with Detectron2's command-line contract.

    python tools/lazyconfig_train_net.py --config-file configs/mask_rcnn_mvitv2_b.py \
        [--num-gpus N] [--num-machines M --machine-rank R --dist-url URL] [--resume] \
        [--eval-only] [--auto-scale | --scale-batch-size N] [--grad-accumulation K] \
        [--register-coco NAME JSON IMAGES] [key=value ...]

Logs (losses, ETA), TensorBoard events, metrics.json, config.yaml and checkpoints go to
train.output_dir. See ``--help`` and mvit_det.engine.train_net for details.
"""

import sys

from mvit_det.engine.train_net import run_cli

if __name__ == "__main__":
    sys.exit(run_cli())
