"""A batch holding NaN (or a step that diverged) never reaches the batch-norm running statistics: they
keep their last finite values on every step path (the direct fused step, the autograd step on either
backend, a hand-written loop on the module), and the trainer stops naming the step."""
import pytest
import torch

from twoway_fast import data, presets
from twoway_fast.data import Split
from twoway_fast.step.direct import DirectStep
from twoway_fast.train import NonFiniteLoss, Trainer, TrainConfig, build

BATCH = 64
BAD_BATCH = 3  # 1-based, in the first epoch (no shuffling)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", data.DataConfig(preprocess="none"))


def running_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def poisoned(split: Split) -> Split:
    x = split.x.clone()
    x[(BAD_BATCH - 1) * BATCH + 5, 2] = float("nan")
    return Split(x, split.y, None, split.device)


@pytest.mark.parametrize("backend, optimizer, path", [("fused", "sgd", "direct"), ("fused", "Adam", "direct"),
                                                       ("reference", "sgd", "autograd")])
def test_nan_batch_stops_training_naming_the_step_and_running_stats_stay_finite(digits, backend, optimizer, path):
    preset = presets.resolve("mnist", overrides=["model.hidden=[16,8,16]", f"model.backend='{backend}'",
                                                 f"train.optimizer='{optimizer}'", "train.shuffle=false",
                                                 f"train.batch_size={BATCH}", "train.epochs=2"])
    config = TrainConfig(**preset.train)
    model, criterion = build(preset, digits.dx, digits.dy, config.seed)
    trainer = Trainer(model, criterion, poisoned(digits.train), digits.val, config, None, progress=False)
    assert isinstance(trainer.step, DirectStep) == (path == "direct")
    before_bad = {}

    class Watch:  # the running statistics just before the bad step
        def on_step(self, step, terms):
            if step == BAD_BATCH - 1:
                before_bad.update(running_stats(model))

    trainer.callbacks.append(Watch())
    steps = len(digits.train) // BATCH
    with pytest.raises(NonFiniteLoss, match=rf"loss is nan at step {BAD_BATCH} \(epoch 1, batch {BAD_BATCH} of {steps}\)"):
        trainer.fit()
    after = running_stats(model)
    assert all(torch.isfinite(v).all() for v in after.values())
    # Unchanged from the bad step on (every later step of a diverged model is non-finite too).
    for name, value in after.items():
        torch.testing.assert_close(value, before_bad[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_module_in_training_mode_keeps_running_stats_on_a_nan_batch(backend):
    preset = presets.resolve("mnist", overrides=["model.hidden=[16,8,16]", f"model.backend='{backend}'"])
    model = preset.build_model(12, 10).train()
    x, y = torch.randn(32, 12), torch.randn(32, 10)
    model(x, y)
    before = running_stats(model)
    x[4, 0] = float("inf")
    out = model(x, y)
    assert not torch.isfinite(out.y_hat).all()  # the batch itself is not hidden
    for name, value in running_stats(model).items():
        assert torch.equal(value, before[name]), name
    model(torch.randn(32, 12), y)  # the next finite batch updates them again
    assert all(not torch.equal(v, before[k]) for k, v in running_stats(model).items() if "x.0" in k)
