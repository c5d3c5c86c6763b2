"""A training run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run.

Design: checkpoints are written once per epoch (model, optimiser, scheduler, the shuffling and dropout
generators, torch's generator); a run killed mid-epoch resumes at the start of that epoch and replays
it bit for bit. The runs are subprocesses (one thread each, for determinism) that stop at a chosen
point and wait there to be killed, so the kill lands where the test says, not where the scheduler
happens to be:
  1. mid-epoch 2, between a step's forward pass and its backward pass;
  2. (resumed run) while saving epoch 3's checkpoint, between the two renames of write_atomic: last.pt
     has become previous.pt and the new last.pt is not in place yet, so resume must fall back to
     previous.pt with a warning.
The uninterrupted run with the same seed runs alongside.
"""
import os
import signal
import subprocess
import sys

import torch

from twoway_fast import run

EPOCHS = 3
STEPS_PER_EPOCH = 1294 // 32  # digits training rows / batch size

CHILD = f"""
import os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from twoway_fast import data, presets
from twoway_fast.train import Trainer, TrainConfig, build

out, pause, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"

def hold():  # tell the parent where we are, then wait for its SIGKILL
    print("paused", flush=True)
    sys.stdin.read()
    sys.exit("not killed")

replace, renames = os.replace, [0]
def replace_and_maybe_hold(src, dst):
    if Path(dst).name == "last.pt":
        renames[0] += 1
        if pause == f"rename:{{renames[0]}}":
            hold()
    replace(src, dst)
os.replace = replace_and_maybe_hold

preset = presets.resolve("digits", overrides=["model.hidden=[16,8,16]", "train.epochs={EPOCHS}"])
config = TrainConfig(**preset.train)
dataset = data.load("digits", data.DataConfig(**preset.data))
model, criterion = build(preset, dataset.dx, dataset.dy, config.seed)
steps = [0]
def criterion_and_maybe_hold(output, x, y):
    terms = criterion(output, x, y)
    if torch.is_grad_enabled():  # a training step, not validation
        steps[0] += 1
        if pause == f"step:{{steps[0]}}":
            hold()
    return terms
trainer = Trainer(model, criterion_and_maybe_hold, dataset.train, dataset.val, config, out, progress=False)
if resume:
    trainer.resume()
trainer.fit()
torch.save(model.state_dict(), Path(out) / "final.pt")
"""


def child(out, pause="none", resume=False):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), pause, "resume" if resume else "fresh"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def kill_when_paused(proc):
    line = proc.stdout.readline()
    if line != "paused\n":
        _, err = proc.communicate(timeout=60)
        raise AssertionError(f"the run did not reach its pause point: {line!r}\n{err}")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


def test_sigkill_and_resume_give_the_uninterrupted_weights(tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = child(straight_dir)

    kill_when_paused(child(killed_dir, f"step:{STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2}"))  # mid-epoch 2
    assert run.load_checkpoint(killed_dir / run.LAST)["epoch"] == 1

    kill_when_paused(child(killed_dir, "rename:2", resume=True))  # saving epoch 3 (epoch 2 was rename 1)
    assert not (killed_dir / run.LAST).exists() and list(killed_dir.glob(".last.pt.*.tmp"))
    assert run.load_checkpoint(killed_dir / run.PREVIOUS)["epoch"] == 2

    err = finish(child(killed_dir, resume=True))
    assert "resuming from" in err and "previous.pt (epoch 2) instead" in err
    finish(straight)

    want = torch.load(straight_dir / "final.pt")
    got = torch.load(killed_dir / "final.pt")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert strip_timing(run.read_metrics(killed_dir)) == strip_timing(run.read_metrics(straight_dir))
    assert run.load_checkpoint(killed_dir / run.LAST)["epoch"] == EPOCHS
    assert not list(killed_dir.glob(".*.tmp"))  # the torn write's temporary file was cleared on resume
