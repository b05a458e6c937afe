"""A small ViL Mask R-CNN on the synthetic shapes dataset, trainable on a CPU in minutes.

The detector, optimizer and schedule are those of the ViL recipes (common/mask_rcnn_vil.py),
shrunk; data, iterations and head sizes are those of the MViTv2 shapes demo
(configs/demo/mask_rcnn_mvitv2_shapes.py), so the two backbones can be compared: a 5-pair ViL
with channels 32/48/64/96, window 7 and global tokens 1/1/1/0, FPN, RPN and box head at 128
channels, a 2-conv mask head at 64 channels, 128 RoIs per image (half positive), 4 images of
192x192 per iteration (LSJ, scale 0.8-1.25), 600 iterations from scratch on ``shapes_train``,
evaluated on ``shapes_val``.
"""

from mvit_det.config.shapes_demo import use_shapes_demo_heads
from mvit_det.model_zoo import get_config

from ..common.mask_rcnn_vil import lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(
    embed_dims=(32, 48, 64, 96), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 3), drop_path_rate=0.0
)
use_shapes_demo_heads(model)

# shapes_train / shapes_val, LSJ at 192 px, 4 images per iteration
dataloader = get_config("demo/mask_rcnn_mvitv2_shapes.py").dataloader

optimizer.lr = 6e-4

train.init_checkpoint = ""
train.seed = 0
train.output_dir = "./output/demo_shapes_vil"
train.max_iter = 600
train.reference_world_size = 1
train.checkpointer.period = 200
train.eval_period = 600
train.log_period = 20
train.ddp.find_unused_parameters = True
lr_multiplier.scheduler.milestones = [500, 570]
lr_multiplier.warmup_length = 50 / train.max_iter
