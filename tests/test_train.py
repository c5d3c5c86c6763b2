import json
import math

import numpy as np
import pytest
import torch

from twoway_fast import data, presets, run
from twoway_fast.train import NonFiniteLoss, Trainer, TrainConfig, build

OVERRIDES = ["model.hidden=[16,8,16]", "train.batch_size=128", "train.optimizer='Adam'", "train.lr=0.001"]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", data.DataConfig(preprocess="none"))


def trainer(digits, run_dir, epochs=2, criterion_wrapper=None, **train):
    preset = presets.resolve("mnist", overrides=OVERRIDES + [f"train.epochs={epochs}"])
    config = TrainConfig(**(preset.train | train))
    model, criterion = build(preset, digits.dx, digits.dy, config.seed)
    if criterion_wrapper is not None:
        criterion = criterion_wrapper(criterion)
    return Trainer(model, criterion, digits.train, digits.val, config, run_dir, progress=False)


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_deterministic_and_resume_equals_uninterrupted(digits, tmp_path):
    # A 1-epoch run stands in for a 2-epoch run stopped after its first epoch: the same only under a
    # schedule that does not depend on the epoch count (the cosine's resume has its own test).
    step = {"lr_schedule": "multistep"}
    straight = trainer(digits, tmp_path / "a", epochs=2, **step)
    straight.fit()
    again = trainer(digits, tmp_path / "b", epochs=2, **step)
    again.fit()
    first = trainer(digits, tmp_path / "c", epochs=1, **step)
    first.fit()
    resumed = trainer(digits, tmp_path / "c", epochs=2, **step)
    resumed.resume()
    assert resumed.epoch == 1
    resumed.fit()
    for other in (again, resumed):
        for k, v in params(straight.model).items():
            assert torch.equal(v, other.model.state_dict()[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]  # noqa: E731
    assert strip(run.read_metrics(tmp_path / "c")) == strip(run.read_metrics(tmp_path / "a"))


def test_run_folder_contents(digits, tmp_path):
    t = trainer(digits, tmp_path, epochs=2)
    log = t.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "previous.pt"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    val = log[-1]["val"]
    for key in ("total", "recon_x", "recon_y", "midway", "decorr_x", "decorr_y", "weight_decay", "gamma_penalty",
                "total_correlation"):
        assert math.isfinite(val[key]), key
    assert set(val["x2y"]) == {"r1", "r5", "r10", "medr"}
    state = run.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "shuffle_gen", "dropout_gen"} <= set(state)
    best_epoch = max(r["epoch"] for r in log if r["best"])
    assert run.load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    steps = len(digits.train) // 128  # per epoch

    def poison(criterion):
        calls = {"n": 0}

        def wrapped(out, x, y):
            terms = criterion(out, x, y)
            calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
            if calls["n"] == steps + 3:  # third step of epoch 2
                return terms._replace(total=terms.total * float("nan"))
            return terms
        return wrapped

    t = trainer(digits, tmp_path, epochs=3, criterion_wrapper=poison)
    with pytest.raises(NonFiniteLoss, match=rf"loss is nan at step {steps + 3} \(epoch 2, batch 3 of {steps}\).*"
                                            r"last good checkpoint is .*last\.pt \(epoch 1\)"):
        t.fit()
    good = run.load_checkpoint(tmp_path / "last.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert len(run.read_metrics(tmp_path)) == 1


def test_optimizer_choice_and_errors(digits, tmp_path):
    with pytest.raises(ValueError, match="not a torch.optim optimiser"):
        trainer(digits, tmp_path, optimizer="nope")
    with pytest.raises(ValueError, match="train.select"):
        TrainConfig(select="accuracy")
    with pytest.raises(ValueError, match="batch_size 5000 exceeds"):
        trainer(digits, tmp_path, batch_size=5000)
    t = trainer(digits, None, epochs=1, optimizer="RMSprop")
    assert type(t.optimizer).__name__ == "RMSprop"
    t.fit()
    assert not list(tmp_path.iterdir())  # no run folder: nothing written


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_sgd_schedule_is_spec_default(digits):
    t = trainer(digits, None, **presets.get("mnist", faithful=True).train)  # the original's schedule
    group = t.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["lr"]) == (0.9, True, 1e-4)
    assert group["fused"]  # torch's fused kernel on the CPU, not its per-tensor loop
    lrs = []
    for _ in range(81):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        t.scheduler.step()
    assert np.allclose([lrs[0], lrs[20], lrs[40], lrs[60], lrs[80]], [1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6])
    assert lrs[19] == 1e-4


def test_cosine_schedule_falls_to_zero_and_resumes_on_it(digits, tmp_path):
    lrs = [row["lr"] for row in trainer(digits, tmp_path / "a", epochs=4, lr_schedule="cosine").fit()]
    # the rate each row logs is the next epoch's: base * (1 + cos(pi * epoch / epochs)) / 2
    assert np.allclose(lrs, [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)])
    trainer(digits, tmp_path / "b", epochs=2, lr_schedule="cosine").fit()
    longer = trainer(digits, tmp_path / "b", epochs=4, lr_schedule="cosine")  # resumed with more epochs
    longer.resume()
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 2 / 4)) / 2)
    with pytest.raises(ValueError, match="train.lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")


def test_select_by_validation_r1(digits, tmp_path):
    t = trainer(digits, tmp_path, epochs=3, select="r1")
    log = t.fit()
    mean_r1 = [(r["val"]["x2y"]["r1"] + r["val"]["y2x"]["r1"]) / 2 for r in log]
    best_epoch = max(r["epoch"] for r in log if r["best"])
    assert mean_r1[best_epoch - 1] == max(mean_r1)
    assert run.load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch
