"""What a training reports as it goes: the Callback protocol the Trainer calls (`Trainer(...,
callbacks=[...])`) and the callbacks twoway_fast ships: one line per epoch (EpochLines), a CSV table
(CSVLogger, RUN/metrics.csv) and TensorBoard scalars (TensorBoardLogger, RUN/tensorboard/). Each writes
what metrics.jsonl holds, flattened to "train/total", "val/x2y/r1", ...; metrics.jsonl itself stays the
run's record (resume reads it)."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from . import run
from .types import LossTerms

CSV, TENSORBOARD = "metrics.csv", "tensorboard"  # in the run folder
WRITERS = ("csv", "tensorboard")  # what train --log may name


class Callback(Protocol):
    """Either method may be left out. The trainer calls them in process 0 only.

    on_step(step, terms): after every training step (step counts from 1 over the whole run); `terms` are
    the step's LossTerms, 0-d tensors on the training device: reading one (float(terms.total)) waits for
    the device, so read them only as often as needed.
    on_epoch(row): after every epoch, with the row metrics.jsonl gets (epoch, lr, seconds, samples_per_s,
    precision: the dtype of the network's products, "fp32" or "bf16"; train: the mean of each loss term
    over the epoch, val: the validation terms and metrics, best)."""

    def on_step(self, step: int, terms: LossTerms) -> None: ...

    def on_epoch(self, row: dict[str, Any]) -> None: ...


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """A metrics row as {"epoch": 1, "train/total": ..., "val/x2y/r1": ...}; booleans as 0/1."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}/")
        elif isinstance(value, (bool, int, float)):
            flat[name] = int(value) if isinstance(value, bool) else value
    return flat


def epoch_line(row: dict[str, Any]) -> str:
    """One epoch in one line: losses, and with validation its paired correlation and R@1."""
    line = f"epoch {row['epoch']:>3}: train loss {row['train']['total']:.4g}"
    val = row.get("val")
    if val is not None:
        line += (f", val loss {val['total']:.4g}, val total corr {val['total_correlation']:.2f}, "
                 f"val R@1 {val['x2y']['r1']:.1f}/{val['y2x']['r1']:.1f}{'  (best)' if row['best'] else ''}")
    products = ", bf16 products" if row.get("precision") == "bf16" else ""
    return line + f"  [{row['samples_per_s']:.0f} samples/s{products}]"


class EpochLines:
    """Prints epoch_line(row) after each epoch (the command line: to stderr; the estimator's verbose:
    stdout)."""

    def __init__(self, file: TextIO | None = None):
        self.file = file

    def on_epoch(self, row: dict[str, Any]) -> None:
        print(epoch_line(row), file=self.file or sys.stderr, flush=True)


class CSVLogger:
    """RUN/metrics.csv: one row per epoch, a column per flattened metric; rewritten whole (atomically)
    each epoch, like metrics.jsonl. `rows`: the rows a resumed run already has (Trainer.log)."""

    def __init__(self, path: str | Path, rows: list[dict[str, Any]] = ()):
        self.path = Path(path)
        self.rows = [flatten(r) for r in rows]

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(flatten(row))
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        run.write_atomic(self.path, text.getvalue().encode())


class TensorBoardLogger:
    """Every flattened metric as a TensorBoard scalar against the epoch, in `log_dir`
    (torch.utils.tensorboard, which needs the tensorboard package: pip install tensorboard).
    `resumed_at`: the epoch a resumed run continues after; events past it (from the attempt that
    stopped) are dropped. close() when done."""

    def __init__(self, log_dir: str | Path, resumed_at: int = 0):
        self.writer = tensorboard_writer()(str(log_dir), purge_step=resumed_at + 1 if resumed_at else None)

    def on_epoch(self, row: dict[str, Any]) -> None:
        for name, value in flatten(row).items():
            if name != "epoch":
                self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_writer():
    """torch.utils.tensorboard.SummaryWriter, or a ValueError saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError(f"--log tensorboard needs the tensorboard package ({err}); install it with "
                         "pip install tensorboard (or the twoway_fast[tensorboard] extra)") from None
    return SummaryWriter
