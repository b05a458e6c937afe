"""Training-loop settings read by tools/lazyconfig_train_net.py."""

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    # The recipe's number of GPUs for dataloader.train.total_batch_size images per iteration;
    # --auto-scale / --scale-batch-size scale batch, LR and schedule from it.
    reference_world_size=64,
    # Optimizer steps accumulate this many micro-batches of total_batch_size / N images.
    grad_accumulation=1,
    # Automatic mixed precision (off when training falls back to the CPU): "float16" (with loss
    # scaling) or "bfloat16" (GPUs from Ampere on).
    amp=dict(enabled=True, precision="float16"),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=True),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    log_period=20,
    device="cuda",
    seed=-1,
)
