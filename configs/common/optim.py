"""AdamW for MViT detectors: no weight decay on norms, pos_embed and relative-position tables.

Layer-wise learning-rate decay of the MViT blocks is built in and off (``decay_rate=1.0``);
switch it on with e.g. ``optimizer.params.lr_factor_func.decay_rate=0.8``.
"""

import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params
from mvit_det.solver import MViTLayerDecay

optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model object by the training tool.
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        overrides={
            "pos_embed": {"weight_decay": 0.0},
            "rel_pos_h": {"weight_decay": 0.0},
            "rel_pos_w": {"weight_decay": 0.0},
        },
        lr_factor_func=L(MViTLayerDecay)(
            depth="${model.backbone.bottom_up.depth}",
            last_block_indexes="${model.backbone.bottom_up.last_block_indexes}",
            decay_rate=1.0,
        ),
    ),
    lr=1.6e-4,  # at 64 images per iteration
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
