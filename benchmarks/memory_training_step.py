"""Peak tensor memory of one training step, fused against reference (float32, batch 128):
    python benchmarks/memory_training_step.py

What is measured: torch.profiler(profile_memory=True) records every allocation and free of torch's
CPU allocator, inside the ops too (dropout masks, activations kept for backward, temporaries), with
the running total. The figure is the highest total during one step above the total when the step
starts, after two warm-up steps (parameters and momentum buffers exist; the step's gradients are
set to None first, so their allocation counts). Not counted: BLAS-internal buffers and Python
objects. Each (provider, shape) runs in a fresh process."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from training_step import SHAPES, make_step  # noqa: E402


def measure(provider: str, shape: str) -> float:
    """Peak bytes allocated during one step above the step's start."""
    step = make_step(provider, shape)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = [e for e in json.load(open(trace.name))["traceEvents"] if e.get("name") == "[memory]"]
    events.sort(key=lambda e: e["ts"])
    start = events[0]["args"]["Total Allocated"] - events[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in events) - start


def main() -> None:
    if len(sys.argv) == 3:
        print(measure(*sys.argv[1:]))
        return
    print(f"peak tensor allocation during one training step above its start (MiB), torch {torch.__version__}")
    for shape in SHAPES:
        peak = {p: float(subprocess.run([sys.executable, __file__, p, shape], capture_output=True, text=True,
                                        check=True).stdout.split()[-1]) / 2**20 for p in ("fused", "reference")}
        print(f"{shape}: fused {peak['fused']:.1f}, reference {peak['reference']:.1f} "
              f"(fused / reference {peak['fused'] / peak['reference']:.2f})")


if __name__ == "__main__":
    main()
