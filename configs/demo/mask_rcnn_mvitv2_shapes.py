"""A small MViTv2 Mask R-CNN on the synthetic shapes dataset, trainable on a CPU in minutes.

The detector, LSJ pipeline, optimizer and schedule are those of configs/mask_rcnn_mvitv2_*.py,
shrunk: a 6-block MViTv2 with embed dim 32, FPN, RPN and box head at 128 channels,
a 2-conv mask head at 64 channels, 128 RoIs per image (half positive), 4 images of 192x192 per
iteration with a milder scale jitter (0.8-1.25), trained from scratch on ``shapes_train``
(generated on first use) and evaluated on ``shapes_val``.
"""

from mvit_det.config.shapes_demo import use_shapes_demo_heads
from mvit_det.data import lsj_test_augmentations, lsj_train_augmentations

from ..common.mask_rcnn_mvitv2 import dataloader, lr_multiplier, model, optimizer, train

IMAGE_SIZE = 192

model.backbone.bottom_up.update(
    embed_dim=32, depth=6, num_heads=1, last_block_indexes=(0, 1, 3, 5), drop_path_rate=0.0
)
use_shapes_demo_heads(model)

dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = lsj_train_augmentations(IMAGE_SIZE, 0.8, 1.25)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0  # a loader process would compete with the 2 compute threads
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = lsj_test_augmentations(IMAGE_SIZE)
dataloader.test.num_workers = 0

optimizer.lr = 6e-4
optimizer.weight_decay = 0.05

train.init_checkpoint = ""
train.seed = 0
train.output_dir = "./output/demo_shapes"
train.max_iter = 600
train.reference_world_size = 1
train.checkpointer.period = 200
train.eval_period = 600
train.log_period = 20
lr_multiplier.scheduler.milestones = [500, 570]
lr_multiplier.warmup_length = 50 / train.max_iter
