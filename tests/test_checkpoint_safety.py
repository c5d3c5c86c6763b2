"""A checkpoint that someone re-saved with one extra pickled object (code that runs when unpickled) is
refused on every path that loads one, and its code never runs: checkpoints are read with
torch.load(weights_only=True), and everything the package saves loads that way."""
import shutil

import pytest
import torch

from twoway_fast import run
from twoway_fast.cli import main

from conftest import SMALL_TRAIN


class Payload:
    """Unpickling this creates the file `marker` (what an attacker's code would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker):
    """Re-saves the checkpoint at `path` with the payload added: a well-formed file, CRCs intact."""
    state = torch.load(path, weights_only=True)
    state["notes"] = Payload(marker)
    torch.save(state, path)


def damage(path):
    path.write_bytes(path.read_bytes()[:200])


CPU = ["--device", "cpu"]
# (what is planted, what else is done to the folder, the command)
PATHS = {
    "eval": (run.BEST, None, lambda r, t: ["eval", r, *CPU]),
    "eval_last": (run.LAST, None, lambda r, t: ["eval", r, "--checkpoint", "last", *CPU]),
    "embed": (run.BEST, None, lambda r, t: ["embed", r, "--out", str(t / "z.npz"), *CPU]),
    "resume": (run.LAST, None, lambda r, t: ["train", "--out", r, "--resume", "--epochs", "3", *SMALL_TRAIN[-3:]]),
    "previous_fallback": (run.PREVIOUS, run.LAST,
                          lambda r, t: ["train", "--out", r, "--resume", "--epochs", "3", *SMALL_TRAIN[-3:]]),
}


def test_the_payload_runs_when_unpickled_freely(small_run, tmp_path):
    shutil.copyfile(small_run / run.BEST, tmp_path / "best.pt")
    marker = tmp_path / "ran"
    plant(tmp_path / "best.pt", marker)
    torch.load(tmp_path / "best.pt", weights_only=False)  # what load_checkpoint did before
    assert marker.exists()  # so the tests below, where it does not appear, mean something


@pytest.mark.parametrize("path", sorted(PATHS))
def test_crafted_checkpoint_is_refused_without_running(small_run, tmp_path, capsys, path):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    planted, damaged, command = PATHS[path]
    marker = tmp_path / "ran"
    plant(folder / planted, marker)
    if damaged:
        damage(folder / damaged)
    assert main(command(str(folder), tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{folder / planted}: refused: the checkpoint holds more than tensors and plain data" in err
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["load_checkpoint", "load_model", "load_latest"])
def test_python_loaders_refuse_it(small_run, tmp_path, loader):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    marker = tmp_path / "ran"
    for name in (run.BEST, run.LAST):
        plant(folder / name, marker)
    call = {"load_checkpoint": lambda: run.load_checkpoint(folder / run.BEST),
            "load_model": lambda: run.load_model(folder), "load_latest": lambda: run.load_latest(folder)}[loader]
    with pytest.raises(run.UnsafeCheckpoint, match="refused"):
        call()
    assert not marker.exists()


def test_everything_the_package_saves_loads_weights_only(small_run):
    for name in (run.LAST, run.PREVIOUS, run.BEST):
        state = torch.load(small_run / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "shuffle_gen", "dropout_gen", "torch_rng", "epoch"} <= set(state)
