"""3x schedule of the published recipes: 270k iterations, LR divided by 10 at 180k and 240k after
the recipes' 1000-iteration warmup from 1%; trained on multiple scales (the shortest side drawn
from ``MULTISCALE_SHORT_EDGES``, the longer at most 1333)."""

from .mask_rcnn_vil import lr_multiplier, train

# 270,000 iterations x 16 images = 36.5 epochs of COCO train2017 (118,287 images).
train.max_iter = 270000

lr_multiplier.scheduler.milestones = [180000, 240000]
lr_multiplier.warmup_length = 1000 / train.max_iter

# Shortest sides of the multi-scale training images of the 3x recipes.
MULTISCALE_SHORT_EDGES = tuple(range(640, 801, 32))
