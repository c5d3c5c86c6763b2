"""A run folder cannot be lost: one training writes into it at a time (a lock naming its holder, which
a dead holder does not keep), a folder holding another run is refused unless --resume or --overwrite,
--resume refuses options that would change the run (and says which it applies), and a folder that
cannot be written or lacks room is refused before training starts."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twoway_fast import run
from twoway_fast.cli import main
from twoway_fast.run_lock import LOCK, RunInUse, RunLock

from conftest import SMALL_TRAIN

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "digits", "--data", "digits", "--epochs", "1", *SMALL_TRAIN]
HOLD = "import sys, time; from twoway_fast.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(120)"


def holder(folder):
    """A process holding `folder`'s lock (as a training would), once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_and_a_dead_one_does_not_block(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    proc = holder(folder)
    try:
        assert main([*TRAIN, "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"run folder in use by pid {proc.pid} on host {socket.gethostname()}" in err
        assert not (folder / run.CONFIG).exists()  # refused before writing anything
    finally:
        proc.kill()  # SIGKILL: no chance to clean up; its lock file stays behind
        proc.wait()
    assert (folder / LOCK).exists()
    assert main([*TRAIN, "--out", str(folder)]) == 0
    assert not (folder / LOCK).exists()  # released, and removed, at the end


def test_the_lock_in_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def test_two_concurrent_trainings_leave_one_consistent_run(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "twoway_fast", "train", "--preset", "digits", "--data", "digits",
                               *SMALL_TRAIN, "--epochs", str(epochs), "--out", str(folder)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for epochs in (2, 3)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "run folder in use by pid" in loser or "holds another run" in loser, loser
    assert loser.strip().count("\n") == 0  # one line, no traceback
    epochs = json.loads((folder / run.CONFIG).read_text())["preset"]["train"]["epochs"]
    assert [r["epoch"] for r in run.read_metrics(folder)] == list(range(1, epochs + 1))
    assert run.load_checkpoint(folder / run.LAST)["epoch"] == epochs


def test_training_into_another_run_is_refused_unless_overwrite(small_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main([*TRAIN, "--out", str(folder)]) == 2
    assert ("holds another run (config.json, last.pt, previous.pt, best.pt, metrics.jsonl, eval.json, "
            "preprocessing.npz)") in \
        capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched
    assert main([*TRAIN, "--out", str(folder), "--overwrite"]) == 0
    assert [r["epoch"] for r in run.read_metrics(folder)] == [1]
    assert not (folder / run.PREVIOUS).exists()  # the old run's, removed with it (one epoch writes none)
    assert main([*TRAIN, "--out", str(folder), "--overwrite", "--resume"]) == 2
    assert "choose one" in capsys.readouterr().err


@pytest.mark.parametrize("options, named", [
    (["--set", "loss.lc=9"], "loss.lc: {lc!r} -> 9"),
    (["--lr", "0.5"], "train.lr: 0.001 -> 0.5"),
    (["--faithful"], "preset: digits -> digits (faithful)"),
    (["--preset", "mnist"], "preset: digits -> mnist"),
    (["--config", "CONFIG"], "train.seed: (default) -> 7"),
])
def test_resume_refuses_options_that_change_the_run(small_run, tmp_path, capsys, options, named):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    (tmp_path / "c.toml").write_text("[train]\nseed = 7\n")
    options = [str(tmp_path / "c.toml") if o == "CONFIG" else o for o in options]
    before = (folder / run.LAST).read_bytes()
    assert main(["train", "--out", str(folder), "--resume", *options, *SMALL_TRAIN[-3:]]) == 2
    err = capsys.readouterr().err
    named = named.format(lc=run.read_config(small_run)["preset"].loss["lc"])  # the preset's, whatever it is now
    assert "--resume continues the run as it was configured" in err and named in err, err
    assert (folder / run.LAST).read_bytes() == before


def test_resume_applies_more_epochs_and_says_so(small_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    assert main(["train", "--out", str(folder), "--resume", "--epochs", "3", *SMALL_TRAIN[-3:]]) == 0
    assert "resuming with train.epochs: 2 -> 3" in capsys.readouterr().err
    assert run.read_config(folder)["preset"].train["epochs"] == 3  # recorded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main([*TRAIN, "--out", str(folder)]) == 2
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in capsys.readouterr().err


def test_folder_without_room_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    folder = tmp_path / "run"
    assert main([*TRAIN, "--out", str(folder)]) == 2
    assert "MiB free, the run's checkpoints need about" in capsys.readouterr().err
    assert not (folder / run.METRICS).exists()


def test_config_records_an_absolute_data_path_and_files_follow_the_umask(tmp_path, monkeypatch):
    x = np.random.default_rng(0).random((120, 6), dtype=np.float32)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "pairs.npz", x=x, y=x[:, ::-1] + 0.1)
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["train", "--preset", "digits", "--data", "data/pairs.npz", "--out", "run", "--epochs", "1",
                     *SMALL_TRAIN]) == 0
    finally:
        os.umask(old)
    config = json.loads((tmp_path / "run" / run.CONFIG).read_text())
    assert config["data"] == str(tmp_path / "data" / "pairs.npz")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
    assert {run.CONFIG, run.BEST, run.LAST, run.METRICS, run.PREPROCESSING, "loss.png"} <= set(modes)
    monkeypatch.chdir(tmp_path / "run")  # eval from elsewhere finds the data
    assert main(["eval", ".", "--device", "cpu"]) == 0
    old = os.umask(0o077)
    try:
        run.write_atomic(tmp_path / "private", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600
