"""twoway_fast.cores: other processes' load seen from /proc, the thread budget the Trainer keeps by it,
and the fact that makes adapting it safe: training gives the same bits with any thread count."""
import subprocess
import sys
import time

import pytest
import torch

from twoway_fast import cores, data, presets
from twoway_fast.train import Trainer, TrainConfig, build

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_a_computing_process_is_seen():
    spinner = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert cores.others_running() >= 1
        assert cores.free_cores() <= max(1, cores.usable_cores() - 1)
    finally:
        spinner.kill()
        spinner.wait()


def test_budget_follows_free_cores_up_to_its_ceiling(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        budget = cores.ThreadBudget()
        monkeypatch.setattr(cores, "free_cores", lambda: 1)
        budget.update()
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(cores, "free_cores", lambda: 8)
        budget.update()
        assert torch.get_num_threads() == 2  # never above the count it started with
        monkeypatch.setattr(cores, "free_cores", lambda: 1)
        budget.update()
        budget.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def fitted(threads: int, adapt: bool, monkeypatch=None, free=None, precision="fp32"):
    """(state_dict, thread counts seen by on_step) after 2 epochs of the digits preset."""
    preset = presets.get("digits")
    dataset = data.load("digits", data.DataConfig(**preset.data))
    model, criterion = build(preset, dataset.dx, dataset.dy, 0)
    seen = []

    class Record:
        def on_step(self, step, terms):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if free is not None:
            monkeypatch.setattr(cores, "free_cores", lambda: free)
        config = TrainConfig(**(preset.train | {"epochs": 2, "precision": precision}))
        trainer = Trainer(model, criterion, dataset.train, None, config, None,
                          progress=False, callbacks=[Record()], adapt_threads=adapt)
        trainer.fit()
        assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    return model.state_dict(), seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_gives_the_same_bits_with_one_or_two_threads(precision):
    one, _ = fitted(1, adapt=False, precision=precision)
    two, _ = fitted(2, adapt=False, precision=precision)
    for name, value in one.items():
        assert torch.equal(value, two[name]), name


def test_trainer_uses_the_free_cores_and_restores_the_count(monkeypatch):
    _, seen = fitted(2, adapt=True, monkeypatch=monkeypatch, free=1)
    assert set(seen) == {1}
    _, seen = fitted(2, adapt=False, monkeypatch=monkeypatch, free=1)
    assert set(seen) == {2}
