"""What a training reports: the callback protocol (on_step with the terms, on_epoch with the metrics
row), the CSV and TensorBoard writers (what metrics.jsonl holds, resumed runs included), the progress
bar only on a terminal, and the allocator setting only where the command line trains."""
import csv
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from twoway_fast import callbacks, data, heap, presets, run
from twoway_fast.cli import main
from twoway_fast.train import Trainer, TrainConfig, build
from twoway_fast.types import LossTerms

from conftest import SMALL_TRAIN

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "digits", "--data", "digits", *SMALL_TRAIN]


def small_trainer(run_dir=None, cbs=()):
    digits = data.load("digits")
    preset = presets.resolve("digits", overrides=["model.hidden=[16,8,16]", "train.epochs=2", "train.batch_size=128"])
    config = TrainConfig(**preset.train)
    model, criterion = build(preset, digits.dx, digits.dy, config.seed)
    return Trainer(model, criterion, digits.train, digits.val, config, run_dir, progress=False, callbacks=cbs)


def test_callbacks_get_every_step_s_terms_and_every_epoch_s_row():
    steps, rows = [], []

    class Record:
        def on_step(self, step, terms):
            assert isinstance(terms, LossTerms) and not terms.total.requires_grad
            steps.append((step, float(terms.total)))

        def on_epoch(self, row):
            rows.append(row)

    class EpochsOnly:  # either method may be left out
        def __init__(self):
            self.epochs = []

        def on_epoch(self, row):
            self.epochs.append(row["epoch"])

    only = EpochsOnly()
    trainer = small_trainer(cbs=[Record(), only])
    log = trainer.fit()
    per_epoch = len(trainer.train_split) // 128
    assert [s for s, _ in steps] == list(range(1, 2 * per_epoch + 1))
    assert rows == log and only.epochs == [1, 2]
    # The epoch's train loss is the mean of its steps' totals.
    first = [v for s, v in steps if s <= per_epoch]
    assert log[0]["train"]["total"] == pytest.approx(sum(first) / per_epoch, rel=1e-6)


def test_epoch_line_names_bf16_products_and_not_float32_ones():
    row = {"epoch": 3, "train": {"total": 1.5}, "samples_per_s": 1000.0, "precision": "fp32"}
    assert callbacks.epoch_line(row) == "epoch   3: train loss 1.5  [1000 samples/s]"
    assert callbacks.epoch_line(row | {"precision": "bf16"}).endswith("[1000 samples/s, bf16 products]")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_log_writes_what_metrics_jsonl_holds_and_continues_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(out), "--log", "csv"]) == 0
    assert main([*TRAIN, "--epochs", "3", "--out", str(out), "--resume", "--log", "csv"]) == 0
    table = read_csv(out / callbacks.CSV)
    metrics = run.read_metrics(out)
    assert len(table) == len(metrics) == 3
    for written, row in zip(table, metrics):
        flat = callbacks.flatten(row)
        assert set(written) == set(flat) and {"train/total", "val/x2y/r1", "val/total_correlation"} <= set(flat)
        for key, value in flat.items():
            assert float(written[key]) == pytest.approx(value, rel=1e-12, abs=0), key
    assert main([*TRAIN, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / callbacks.CSV).exists()  # the replaced run's log goes with it


def test_tensorboard_log_writes_what_metrics_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(out), "--log", "tensorboard"]) == 0
    events = EventAccumulator(str(out / callbacks.TENSORBOARD))
    events.Reload()
    for row in run.read_metrics(out):
        for key, value in callbacks.flatten(row).items():
            if key != "epoch":
                scalar = {e.step: e.value for e in events.Scalars(key)}[row["epoch"]]
                assert scalar == pytest.approx(value, rel=1e-6), key


def test_the_command_line_offers_every_writer_and_only_those():
    from twoway_fast import cli, pipeline

    assert cli.LOGGERS == callbacks.WRITERS
    with pytest.raises(ValueError, match=r"log may name csv, tensorboard; got \['json'\]"):
        pipeline.train_run(presets.get("digits"), "digits", "unused", "cpu", log=["json"])


def test_tensorboard_without_its_package_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run"), "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "--log tensorboard needs the tensorboard package" in err and "pip install tensorboard" in err
    assert not (tmp_path / "run" / run.CONFIG).exists()


def train_with_stderr(tmp_path, stderr, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a for a in SMALL_TRAIN if a != "--no-progress"]  # the bar left to decide for itself
    return subprocess.run([sys.executable, "-m", "twoway_fast", *TRAIN[:5], *args, "--epochs", "1",
                           "--out", str(tmp_path / name)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr,
                          timeout=300)


def test_progress_bar_only_on_a_terminal(tmp_path):
    piped = train_with_stderr(tmp_path, subprocess.PIPE, "piped")
    assert piped.returncode == 0
    err = piped.stderr.decode()
    assert "epoch   1: train loss" in err  # the line per epoch stays
    assert "\r" not in err and "sample/s" not in err
    # Control: on a terminal the bar is drawn.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column one draws nothing
    try:
        proc = train_with_stderr(tmp_path, follower, "terminal")
        os.close(follower)
        follower = None
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert b"\r" in seen and b"epoch 1/1" in seen


def test_allocator_setting_only_where_the_command_line_trains(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    small_trainer().fit()  # a library user's training
    assert calls == []
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert calls == [1]
