"""Recipe scaling, gradient accumulation and checked overrides."""

import pytest
import torch
from detectron2.utils.events import EventStorage

from mvit_det.engine import (
    AccumulationTrainer,
    ConfigOverrideError,
    apply_overrides_checked,
    auto_scale_recipe,
    micro_batch_size,
    scale_recipe,
)
from mvit_det.model_zoo import get_config


def test_scale_recipe_is_linear_in_lr_and_inverse_in_schedule():
    cfg = get_config("mask_rcnn_mvitv2_b.py")
    warmup_fraction = cfg.lr_multiplier.warmup_length
    scale_recipe(cfg, 16)
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == pytest.approx(1.6e-4 / 4)
    assert cfg.train.max_iter == 67500 * 4
    assert list(cfg.lr_multiplier.scheduler.milestones) == [52500 * 4, 62500 * 4]
    assert cfg.lr_multiplier.scheduler.num_updates == cfg.train.max_iter  # interpolated
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(1000)
    assert cfg.lr_multiplier.warmup_length == warmup_fraction
    assert cfg.train.eval_period == 20000 and cfg.train.checkpointer.period == 20000
    assert cfg.train.reference_world_size == 16


def test_auto_scale_keeps_images_per_gpu():
    cfg = get_config("cascade_mask_rcnn_mvitv2_t.py")
    auto_scale_recipe(cfg, 8)  # recipe: 64 images on 64 GPUs
    assert cfg.dataloader.train.total_batch_size == 8
    assert cfg.optimizer.lr == pytest.approx(2e-5) and cfg.train.max_iter == 540000
    cfg = get_config("cascade_mask_rcnn_mvitv2_t.py")
    cfg.train.reference_world_size = 48
    with pytest.raises(ValueError, match="not an integer"):
        auto_scale_recipe(cfg, 5)


def test_micro_batch_size():
    assert micro_batch_size(64, 8, 1) == 8
    assert micro_batch_size(64, 4, 2) == 16
    with pytest.raises(ValueError, match="multiple of"):
        micro_batch_size(64, 3, 1)
    with pytest.raises(ValueError, match=">= 1"):
        micro_batch_size(64, 0, 1)


class _Regression(torch.nn.Module):
    """Mean squared error of a linear model, as a dict of losses like Detectron2 models."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss_mse": ((self.linear(x).squeeze(1) - y) ** 2).mean()}


def _one_step(batches, accumulation_steps):
    torch.manual_seed(0)
    model = _Regression()
    trainer = AccumulationTrainer(
        model,
        batches,
        torch.optim.SGD(model.parameters(), lr=0.1),
        accumulation_steps=accumulation_steps,
    )
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
        loss = storage.history("total_loss").latest()
    return model.linear.weight.detach().clone(), loss


def test_gradient_accumulation_matches_the_full_batch():
    torch.manual_seed(1)
    x, y = torch.randn(8, 3), torch.randn(8)
    full_w, full_loss = _one_step([(x, y)], 1)
    acc_w, acc_loss = _one_step([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    torch.testing.assert_close(full_w, acc_w)
    assert acc_loss == pytest.approx(full_loss, rel=1e-5)
    with pytest.raises(ValueError):
        AccumulationTrainer(_Regression(), [], None, accumulation_steps=0)


def test_accumulation_trainer_state_has_grad_scaler():
    model = _Regression()
    trainer = AccumulationTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    state = trainer.state_dict()
    assert "grad_scaler" in state and "optimizer" in state
    trainer.load_state_dict(state)


def test_overrides_are_checked():
    cfg = get_config("mask_rcnn_mvitv2_t.py")
    apply_overrides_checked(
        cfg,
        [
            "train.max_iter=10",
            "model.backbone.bottom_up.attn_impl=eager",  # MViT argument not in the config
            "datasets.my_ds.json_file=/data/a.json",  # free-form node
            "dataloader.train.mapper.augmentations.1.min_scale=0.3",
        ],
    )
    assert cfg.train.max_iter == 10 and cfg.model.backbone.bottom_up.attn_impl == "eager"
    assert cfg.dataloader.train.mapper.augmentations[1].min_scale == 0.3
    bad = {
        "train.max_iterr=5": "Did you mean 'max_iter'",
        "model.backbone.bottom_up.embed_dimm=8": "mvit_det.*embed_dim",
        "train.max_iter": "not of the form key=value",
        "train.max_iter.x=1": "not a config node",
        "dataloader.train.mapper.augmentations.7.x=1": "list of 3 items",
        "train.max_iter=[1,": "Cannot apply override",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigOverrideError, match=message):
            apply_overrides_checked(cfg, [override])


class _RecordingModel(torch.nn.Module):
    """Records the dtype its forward computes in and a random draw of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.dtypes, self.draws = [], []

    def forward(self, batch):
        out = self.linear(batch)
        self.dtypes.append(out.dtype)
        self.draws.append(torch.rand(1).item())
        return {"loss": out.float().pow(2).mean()}


def _steps(trainer, iterations):
    with EventStorage(0) as storage:
        trainer.storage = storage
        for trainer.iter in iterations:
            trainer.run_step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_precision(dtype):
    model = _RecordingModel()
    batches = iter([torch.randn(4, 3)] * 2)
    trainer = AccumulationTrainer(
        model, batches, torch.optim.SGD(model.parameters(), lr=0.1), amp=True, amp_dtype=dtype
    )
    assert trainer.grad_scaler.is_enabled() == (dtype == torch.float16)
    _steps(trainer, [0])
    assert model.dtypes == [dtype]


def test_iterations_draw_the_same_randomness_when_resumed():
    def draws(iterations):
        model = _RecordingModel()
        trainer = AccumulationTrainer(
            model, iter([torch.randn(2, 3)] * 8), torch.optim.SGD(model.parameters(), lr=0.1),
            seed=11,
        )  # fmt: skip
        _steps(trainer, iterations)
        return model.draws

    torch.manual_seed(0)
    whole = draws(range(6))
    torch.manual_seed(1)  # another process state
    assert draws(range(4, 6)) == whole[4:]
    assert len(set(whole)) == 6


def test_override_values_keep_their_type():
    cfg = get_config("mask_rcnn_mvitv2_t.py")
    apply_overrides_checked(
        cfg,
        [
            "optimizer.lr=1",  # an integer is a number
            "train.eval_period=${train.checkpointer.period}",  # resolved later
            "model.backbone.bottom_up.drop_path_rate=0.2",
        ],
    )
    assert cfg.optimizer.lr == 1 and cfg.train.eval_period == cfg.train.checkpointer.period
    cfg = get_config("mask_rcnn_mvitv2_t.py")
    bad = {
        "train.max_iter=abc": r"'train.max_iter' expects an integer \(now 67500\), got 'abc'",
        "train.max_iter=1e4": "expects an integer",
        "optimizer.lr=fast": "'optimizer.lr' expects a number",
        "train.amp.enabled=2": "expects a boolean",
        # an argument of the L(...) callable, typed by its default
        "model.backbone.bottom_up.drop_path_rate=high": "drop_path_rate' expects a number",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigOverrideError, match=message):
            apply_overrides_checked(cfg, [override])
