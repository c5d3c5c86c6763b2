"""Soak run (not part of the test suite): many training steps of an mnist-preset-shaped 2-Way Net with
the fused backend, resident memory (VmRSS) sampled every K steps, to show that nothing accumulates
per step (autograd graphs, saved tensors, optimiser state, Python objects).

    python scripts/soak.py [--steps 10000] [--every 500] [--threads N] [--tolerance-mib 8]

Data: random rows shaped like MNIST halves (392 + 392, rows L2-normalised), shuffled each epoch as in
training. The first sample after a warm-up (a tenth of the steps) is the baseline: allocators and
caches settle in the first steps. "Flat" = the RSS after the warm-up never exceeds the baseline by
more than the tolerance. Exit status 1 when it is not flat.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from twoway_fast import presets
from twoway_fast.data import batches
from twoway_fast.train import TrainConfig, build, make_optimizer

ROWS, WIDTH = 6400, 392  # 50 batches of 128 per epoch


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmRSS in /proc/self/status")


def endless_batches(n: int, size: int, generator: torch.Generator):
    while True:
        yield from batches(n, size, generator, torch.device("cpu"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--every", type=int, default=500, help="steps between memory samples")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--tolerance-mib", type=float, default=8.0, help="allowed growth after the warm-up")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = presets.resolve("mnist", overrides=["model.backend='fused'"])
    config = TrainConfig(**preset.train)
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.rand(ROWS, WIDTH, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.rand(ROWS, WIDTH, generator=gen), dim=1)
    model, criterion = build(preset, WIDTH, WIDTH, seed=0)
    model.train()
    optimizer = make_optimizer(model.parameters(), config)
    order = endless_batches(ROWS, config.batch_size, gen)
    dropout_gen = torch.Generator().manual_seed(1)

    warmup = max(args.every, args.steps // 10)
    print(f"{args.steps} steps, batch {config.batch_size}, hidden {model.hidden}, backend fused, "
          f"{torch.get_num_threads()} thread(s); baseline after step {warmup}")
    print(f"{'step':>7} {'RSS MiB':>9} {'vs base':>8} {'loss':>9} {'steps/s':>8}")
    baseline, worst, start = None, 0.0, time.perf_counter()
    for step in range(1, args.steps + 1):
        index = next(order)
        seed = torch.randint(0, 2**62, (), generator=dropout_gen)
        terms = criterion(model(x[index], y[index], seed=seed), x[index], y[index])
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        if step % args.every == 0 or step == 1:
            loss, rss = float(terms.total.detach()), rss_mib()
            if not math.isfinite(loss):
                print(f"loss is {loss} at step {step}", file=sys.stderr)
                return 1
            if baseline is None and step >= warmup:
                baseline = rss
            delta = "" if baseline is None else f"{rss - baseline:+8.1f}"
            worst = worst if baseline is None else max(worst, rss - baseline)
            print(f"{step:>7} {rss:>9.1f} {delta:>8} {loss:>9.4f} {step / (time.perf_counter() - start):>8.0f}",
                  flush=True)
    flat = worst <= args.tolerance_mib
    print(f"largest growth after the warm-up: {worst:+.1f} MiB (tolerance {args.tolerance_mib} MiB): "
          f"{'flat' if flat else 'NOT flat'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
