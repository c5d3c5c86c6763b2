"""Training throughput when other processes hold cores: the mnist default's training (Trainer, the
preset's model, loss, optimiser and batch size, on random rows of MNIST-halves width) quiet and with
`--busy` spinning processes that this script starts and stops itself (`yes > /dev/null`), each with
the thread count fixed and adapted to the free cores (Trainer's adapt_threads, twoway_fast.cores),
alternated over `--rounds` so that drift falls on all alike. Reports samples/s per round, the best of
each, busy / quiet, and the adaptive count's quiet cost.

    .venv/bin/python benchmarks/contention.py [--threads 2] [--busy 1] [--rows 12800] [--rounds 3]

With one of two cores busy a fair share is half the quiet throughput. Run it on an otherwise idle
machine (it prints the load average first) and say the load with the numbers.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time

import torch

from twoway_fast import presets
from twoway_fast.data import Split
from twoway_fast.heap import keep_freed_memory
from twoway_fast.train import Trainer, TrainConfig, build


def throughput(preset, split: Split, adapt: bool) -> float:
    """Samples per second of one epoch over `split` (the Trainer's own figure: the training loop only)."""
    model, criterion = build(preset, split.x.shape[1], split.y.shape[1], 0)
    config = TrainConfig(**(preset.train | {"epochs": 1}))
    log = Trainer(model, criterion, split, None, config, None, progress=False, adapt_threads=adapt).fit()
    return log[-1]["samples_per_s"]


def spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", type=int, default=1, help="spinning processes during the busy rounds")
    p.add_argument("--rows", type=int, default=12800, help="training rows per measurement (one epoch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default="mnist")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the command line does
    preset = presets.get(args.preset)
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.rand(args.rows, 392, generator=gen), torch.rand(args.rows, 392, generator=gen), None,
                  torch.device("cpu"))
    print(f"{args.preset} preset, {args.threads} threads, {args.rows} rows a measurement, {args.busy} busy "
          f"process(es) in the busy rounds; load average {os.getloadavg()[0]:.2f} at the start")
    throughput(preset, split, True)  # warm-up: allocator, first-call costs
    modes = {"fixed threads": False, "adaptive threads (the Trainer's default)": True}
    quiet = {mode: [] for mode in modes}
    busy = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode, adapt in modes.items():
            quiet[mode].append(throughput(preset, split, adapt))
        procs = spinners(args.busy)
        try:
            time.sleep(0.2)  # the spinners on the cores before the clock starts
            for mode, adapt in modes.items():
                busy[mode].append(throughput(preset, split, adapt))
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        print(f"round {r + 1}: " + "; ".join(f"{mode}: quiet {quiet[mode][-1]:.0f}, busy {busy[mode][-1]:.0f} "
                                              f"samples/s" for mode in modes))
    for mode in modes:
        q, b = max(quiet[mode]), max(busy[mode])
        print(f"{mode}: best quiet {q:.0f}, busy {b:.0f} samples/s; busy / quiet {b / q:.2f}x")
    fixed, adaptive = (max(quiet[m]) for m in modes)
    print(f"quiet, adaptive / fixed: {adaptive / fixed:.3f}x")


if __name__ == "__main__":
    main()
