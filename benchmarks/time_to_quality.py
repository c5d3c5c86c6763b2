"""Test R@1 against training wall time: how soon a preset reaches a retrieval level (deep CCA's 43% on
real MNIST halves by default), and where the full run ends.

    .venv/bin/python benchmarks/time_to_quality.py --data MNIST_DIR [--preset mnist] [--threads 2]
        [--seed 0] [--epochs N] [--target 43] [--set section.key=value ...] [--json FILE]

Trains as `twoway-fast train` does (the preset's model, loss, schedule and data), without a run
folder, and after each epoch encodes the test split and scores R@1 both ways on the raw and the
CCA-projected representations (the projection fitted on the training split, as `eval` does). The
clock counts the training loop only (the Trainer's per-epoch seconds, validation and this scoring
excluded), so the figure is what a user waits for an N-epoch run. Say the machine's load with it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from twoway_fast import data, evaluation, presets
from twoway_fast.heap import keep_freed_memory
from twoway_fast.train import Trainer, TrainConfig, build


class TestRecall:
    """on_epoch: the cumulative training seconds and the test split's R@1 (raw and CCA-projected)."""

    def __init__(self, trainer: Trainer, dataset: data.Dataset):
        self.trainer, self.data, self.rows, self.seconds = trainer, dataset, [], 0.0

    def on_epoch(self, row: dict) -> None:
        self.seconds += row["seconds"]
        scores = evaluation.evaluate(self.trainer.model, self.data, "test")
        entry = {"epoch": row["epoch"], "train_seconds": round(self.seconds, 1),
                 "r1": [scores["x2y"]["r1"], scores["y2x"]["r1"]],
                 "r1_projected": [scores["projected"]["x2y"]["r1"], scores["projected"]["y2x"]["r1"]],
                 "cca_correlation": scores["cca_correlation"], "effective_rank": scores["effective_rank"]}
        self.rows.append(entry)
        print(f"epoch {entry['epoch']:>3}  {entry['train_seconds']:>8.1f} s  R@1 {entry['r1'][0]:5.1f} / "
              f"{entry['r1'][1]:5.1f}  projected {entry['r1_projected'][0]:5.1f} / {entry['r1_projected'][1]:5.1f}"
              f"  CCA protocol {entry['cca_correlation']:.2f}  eff. rank {entry['effective_rank']:.1f}", flush=True)


def first_reaching(rows: list[dict], target: float, key: str) -> dict | None:
    """The first epoch whose R@1 (`key`) reaches `target` in both directions."""
    return next((r for r in rows if min(r[key]) >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="mnist")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--target", type=float, default=43.0, help="R@1 in %% to reach in both directions")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", default=None, help="write the rows and the summary to this file")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory()  # as `twoway-fast train` does
    epochs = [f"train.epochs={a.epochs}"] if a.epochs else []
    preset = presets.resolve(a.preset, overrides=a.overrides + epochs)
    dataset = data.load(a.data, data.DataConfig(**preset.data))
    config = TrainConfig(**(preset.train | {"seed": a.seed}))
    model, criterion = build(preset, dataset.dx, dataset.dy, a.seed)
    trainer = Trainer(model, criterion, dataset.train, dataset.val, config, None, progress=False)
    recall = TestRecall(trainer, dataset)
    trainer.callbacks.append(recall)
    print(f"{a.preset} preset, seed {a.seed}, {config.epochs} epochs, {trainer.precision} products, "
          f"{torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    trainer.fit()
    summary = {"precision": trainer.precision, "threads": torch.get_num_threads(),
               "load_average_end": os.getloadavg()[0], "target": a.target,
               "total_train_seconds": recall.rows[-1]["train_seconds"]}
    for key in ("r1", "r1_projected"):
        hit = first_reaching(recall.rows, a.target, key)
        summary[f"{key}_reached_at"] = None if hit is None else {"epoch": hit["epoch"], "seconds": hit["train_seconds"]}
        print(f"{key}: " + (f"{a.target}% both ways at epoch {hit['epoch']}, {hit['train_seconds']} s of training"
                            if hit else f"never {a.target}% both ways"), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": recall.rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
