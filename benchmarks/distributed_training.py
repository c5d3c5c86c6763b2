"""Data-parallel training throughput: samples/s of the Trainer (twoway_fast.train) in 1 and 2 processes
(gloo on 127.0.0.1, as torchrun sets up), and the bytes (and collectives) each process sends per step.

    .venv/bin/python benchmarks/distributed_training.py [--steps 40] [--epochs 2] [--rounds 3] [--backend fused]

The mnist preset's network (392-[392, 50, 392]-392, float32, global batch 128) on fixed random data of
steps * 128 rows; each epoch is one measurement (the Trainer's samples/s of its training loop, no
validation). The configurations take turns, round after round (fresh processes each time), so a
change in the machine's load hits them alike; the best epoch of each is reported and the ratios are
taken within one invocation. The cores are shared: 1 process runs with as many threads as the
2 processes have together.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twoway_fast import data, distributed, presets
from twoway_fast.heap import keep_freed_memory
from twoway_fast.train import Trainer, TrainConfig, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from distributed_runs import free_port  # noqa: E402

BATCH = 128


def _worker(rank: int, world: int, port: int, threads: int, steps: int, epochs: int, backend: str, sync: bool,
            out: str):
    torch.set_num_threads(threads)
    keep_freed_memory()  # as `twoway-fast train` does in each process it starts
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
    preset = presets.get("mnist").merged({"model": {"backend": backend}}, "benchmark")
    model, criterion = build(preset, 392, 392, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(steps * BATCH, 392, generator=gen), torch.randn(steps * BATCH, 392, generator=gen)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-4, sync_stats=sync)
    trainer = Trainer(model, criterion, data.Split(x, y, None, torch.device("cpu")), None, config, None,
                      progress=False)
    before, calls = distributed.bytes_sent, distributed.collective_calls
    log = trainer.fit()
    per_step = (distributed.bytes_sent - before) / (epochs * steps)
    calls_per_step = (distributed.collective_calls - calls) / (epochs * steps)
    if rank == 0:
        grads = sum(p.numel() * p.element_size() for p in model.parameters())
        Path(out).write_text(json.dumps({"samples_per_s": [row["samples_per_s"] for row in log],
                                         "bytes_per_step": per_step, "calls_per_step": calls_per_step,
                                         "gradient_bytes": grads if world > 1 else 0}))
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, threads: int, steps: int, epochs: int, backend: str, sync: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.json"
        mp.start_processes(_worker, args=(world, free_port(), threads, steps, epochs, backend, sync, out),
                           nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="epochs (measurements) per configuration and round")
    p.add_argument("--rounds", type=int, default=3, help="turns of every configuration")
    p.add_argument("--backend", default="fused", choices=["fused", "reference"])
    args = p.parse_args()
    cores = 2
    configs = [("1 process", 1, cores, True), ("2 processes, sync_stats", 2, cores // 2, True),
               ("2 processes, local stats", 2, cores // 2, False), ("1 process, 1 thread", 1, 1, True)]
    print(f"load average before: {os.getloadavg()[0]:.1f}; backend {args.backend}; {args.rounds} rounds of "
          f"{args.epochs} epochs x {args.steps} steps of {BATCH} rows per configuration")
    results = {}
    for _ in range(args.rounds):
        for name, world, threads, sync in configs:
            r = measure(world, threads, args.steps, args.epochs, args.backend, sync)
            if name in results:
                r["samples_per_s"] = results[name]["samples_per_s"] + r["samples_per_s"]
            results[name] = r
    for name, world, threads, sync in configs:
        r = results[name]
        stats = r["bytes_per_step"] - r["gradient_bytes"]
        print(f"{name:<28} {world} x {threads} threads: best {max(r['samples_per_s']):8.0f} samples/s "
              f"(epochs: {', '.join(f'{s:.0f}' for s in r['samples_per_s'])}); sent per step and process "
              f"{r['bytes_per_step']:.0f} B = gradients {r['gradient_bytes']} B + statistics and metrics "
              f"{stats:.0f} B, in {r['calls_per_step']:.2f} collectives", flush=True)
    base = max(results["1 process"]["samples_per_s"])
    for name in results:
        print(f"{name:<28} / 1 process: {max(results[name]['samples_per_s']) / base:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
