"""Training-step benchmarks on a CUDA device, as ratios measured in one run (scripts/gpu_check.sh runs
them on the H200 and RESULTS.md gets the numbers):
    python benchmarks/cuda_step.py OUT_DIR     # writes OUT_DIR/cuda_step.json and prints a summary

One step = forward, the 2-Way loss, backward and a Nesterov SGD update on fixed data, batch 128, with
the preset's default form:
- mnist (392 -> [392, 50, 392] -> 392): the fused backend eager and replayed as a captured CUDA graph
  (twoway_fast.step.graph), the reference eager, float32 and under bfloat16 autocast; the reference
  and the fused backend under torch.compile(fullgraph=True) (forward and loss; backward through the
  compiled graph), float32.
- flickr30k (4096 -> [2000, 3000, 16000] -> 6000, output layer locally dense M = 2): the same, less
  the compiled steps, beside "gemm_floor" (the fused step's matrix products alone on preallocated
  buffers: both channels' forward and input-gradient GEMMs, the 2B-row weight-gradient GEMMs and the
  decorrelation's two per channel), and the peak memory of a step.

Time: CUDA events around `STEPS` steps after warm-up, the median of `ROUNDS` rounds, in ms per step
(for an eager step this includes the device idling while Python launches kernels, as a user sees it).
Memory: torch.cuda.max_memory_allocated during one step above what was allocated when it started
(parameters, momentum buffers and the previous step's gradients), after two warm-up steps."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

import twoway_fast
from twoway_fast.step.graph import CapturedStep

BATCH = 128
SHAPES = {"mnist": (392, 392), "flickr30k": (4096, 6000)}  # (dx, dy); the widths are the preset's
STEPS, ROUNDS, WARMUP = 20, 5, 5


def make_step(shape: str, backend: str, compiled: bool = False, graph: bool = False, autocast: bool = False):
    """A no-argument callable running one training step on fixed data."""
    dx, dy = SHAPES[shape]
    torch.manual_seed(0)
    preset = twoway_fast.presets.get(shape)
    model = preset.build_model(dx, dy, backend=backend).cuda()
    criterion = preset.build_loss(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    x, y = torch.randn(BATCH, dx, device="cuda"), torch.randn(BATCH, dy, device="cuda")
    seed = torch.tensor(1, device="cuda")

    def loss(x, y, seed):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return criterion(model(x, y, seed=seed), x, y)

    if compiled:
        loss = torch.compile(loss, fullgraph=True)

    def step(x, y, seed):
        terms = loss(x, y, seed)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        return terms

    if graph:
        step = CapturedStep(step, opt)
    return lambda: step(x, y, seed)


def gemm_floor(shape: str):
    """The fused step's matrix products alone, on preallocated buffers (float32)."""
    dx, dy = SHAPES[shape]
    model = twoway_fast.presets.get(shape).build_model(dx, dy, backend="reference").cuda()
    repr_width = model.hidden[model.repr_layer]
    products = []  # (a, b, out) triples, as torch.mm(a, b, out=out)

    def add(m, k, n, count=1):
        for _ in range(count):
            products.append((torch.randn(m, k, device="cuda"), torch.randn(k, n, device="cuda"),
                             torch.empty(m, n, device="cuda")))

    n = len(model.hidden)
    for i, w in enumerate(model.weights):
        blocks, out_w, in_w = (1, *w.shape) if w.dim() == 2 else tuple(w.shape)
        add(BATCH, in_w, out_w, blocks)  # X channel forward
        add(BATCH, out_w, in_w, blocks)  # Y channel forward
        if i > 0:
            add(BATCH, out_w, in_w, blocks)  # X channel input gradient (the first layer's is not needed)
        if i < n:
            add(BATCH, in_w, out_w, blocks)  # Y channel input gradient
        add(out_w, 2 * BATCH, in_w, blocks)  # both channels' weight gradient, K = 2B
    for _ in range(2):  # each channel's decorrelation: C = H^T H, then dH = H C
        add(repr_width, BATCH, repr_width)
        add(BATCH, repr_width, repr_width)

    def step():
        for a, b, out in products:
            torch.mm(a, b, out=out)
    return step


def ms_per_step(run) -> float:
    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(STEPS):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / STEPS)
    return statistics.median(times)


def peak_mib(run) -> float:
    run()
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


CONFIGS = {  # name: (shape, make_step keyword arguments); None: gemm_floor
    "mnist fused": ("mnist", dict(backend="fused")),
    "mnist fused graph": ("mnist", dict(backend="fused", graph=True)),
    "mnist reference": ("mnist", dict(backend="reference")),
    "mnist fused bf16": ("mnist", dict(backend="fused", autocast=True)),
    "mnist fused graph bf16": ("mnist", dict(backend="fused", graph=True, autocast=True)),
    "mnist reference bf16": ("mnist", dict(backend="reference", autocast=True)),
    "flickr30k fused": ("flickr30k", dict(backend="fused")),
    "flickr30k fused graph": ("flickr30k", dict(backend="fused", graph=True)),
    "flickr30k reference": ("flickr30k", dict(backend="reference")),
    "flickr30k gemm_floor": ("flickr30k", None),
    "flickr30k fused bf16": ("flickr30k", dict(backend="fused", autocast=True)),
    "flickr30k fused graph bf16": ("flickr30k", dict(backend="fused", graph=True, autocast=True)),
    "flickr30k reference bf16": ("flickr30k", dict(backend="reference", autocast=True)),
    # Last: compiling takes the longest, and what ran before is kept if the time limit stops the run.
    "mnist compiled reference": ("mnist", dict(backend="reference", compiled=True)),
    "mnist compiled fused": ("mnist", dict(backend="fused", compiled=True)),
}
MEMORY = ["flickr30k fused", "flickr30k reference", "flickr30k fused bf16", "flickr30k reference bf16"]
RATIOS = [  # (label, numerator, denominator): above 1 means the denominator is faster / smaller
    ("mnist: reference / fused", "mnist reference", "mnist fused"),
    ("mnist: reference / fused graph (target >= 10)", "mnist reference", "mnist fused graph"),
    ("mnist: compiled reference / fused graph", "mnist compiled reference", "mnist fused graph"),
    ("mnist: compiled fused / fused graph", "mnist compiled fused", "mnist fused graph"),
    ("mnist: fused / fused bf16", "mnist fused", "mnist fused bf16"),
    ("mnist: reference bf16 / fused graph bf16", "mnist reference bf16", "mnist fused graph bf16"),
    ("flickr30k: fused / gemm_floor (target <= 1.2)", "flickr30k fused", "flickr30k gemm_floor"),
    ("flickr30k: fused graph / gemm_floor", "flickr30k fused graph", "flickr30k gemm_floor"),
    ("flickr30k: reference / fused", "flickr30k reference", "flickr30k fused"),
    ("flickr30k: fused / fused bf16", "flickr30k fused", "flickr30k fused bf16"),
    ("flickr30k: reference bf16 / fused bf16", "flickr30k reference bf16", "flickr30k fused bf16"),
]


def ratios(results: dict) -> dict:
    ms, peak = results["ms_per_step"], results["peak_mib"]
    out = {label: ms[a] / ms[b] for label, a, b in RATIOS if a in ms and b in ms}
    for suffix in ("", " bf16"):
        fused, ref = f"flickr30k fused{suffix}", f"flickr30k reference{suffix}"
        if fused in peak and ref in peak:
            target = "" if suffix else " (target <= 0.7)"
            out[f"flickr30k peak memory{suffix}: fused / reference{target}"] = peak[fused] / peak[ref]
    return out


def main(out_dir: str) -> None:
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": BATCH,
               "ms_per_step": {}, "peak_mib": {}, "errors": {}}
    for name, (shape, kwargs) in CONFIGS.items():
        run = None
        try:
            run = gemm_floor(shape) if kwargs is None else make_step(shape, **kwargs)
            results["ms_per_step"][name] = ms_per_step(run)
            if name in MEMORY:
                results["peak_mib"][name] = peak_mib(run)
        except Exception as err:  # noqa: BLE001 - one failing configuration must not hide the others
            results["errors"][name] = f"{type(err).__name__}: {err}"
        print(f"{name:32s} {results['ms_per_step'].get(name, float('nan')):9.3f} ms/step", flush=True)
        del run
        torch.cuda.empty_cache()
        results["ratios"] = ratios(results)
        Path(out_dir, "cuda_step.json").write_text(json.dumps(results, indent=1))  # after each: a cut run keeps it
    for name, value in results["peak_mib"].items():
        print(f"peak {name:27s} {value:9.1f} MiB")
    for label, value in results["ratios"].items():
        print(f"{label:60s} {value:7.2f}")
    for name, err in results["errors"].items():
        print(f"ERROR {name}: {err}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
