"""The 3x schedule of the published recipes: multi-scale training and 270k iterations."""

from typing import Any


def use_3x_multiscale(dataloader: Any, lr_multiplier: Any, train: Any) -> None:
    """
    Turns a 1x config into the published 3x one, in place: shortest side drawn from 640-800 in
    steps of 32 (max 1333), 270k iterations, LR divided by 10 at 180k and 240k.

    Args:
        dataloader, lr_multiplier, train: the config's nodes.
    """
    resize = dataloader.train.mapper.augmentations[0]
    resize.short_edge_length = tuple(range(640, 801, 32))
    resize.sample_style = "choice"
    train.max_iter = 270000
    lr_multiplier.scheduler.milestones = [180000, 240000]
    lr_multiplier.warmup_length = 1000 / train.max_iter
