"""Runs one provider's mnist training step in a loop, for a sampling profiler to attribute the time:
    perf record -D 8000 -F 2000 -g python benchmarks/profile_step.py fused 3000 [threads]
    perf report --no-children --sort dso        (then --sort sym)
-D skips the start-up (imports, warm-up) so the samples are the steady state. Prints the mean step."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_step import make_step  # noqa: E402


def main(provider: str, steps: int) -> None:
    step = make_step(provider, "mnist")
    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{provider}: {(time.perf_counter() - t) / steps * 1e3:.2f} ms a step (mean of {steps}), "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    main(sys.argv[1] if len(sys.argv) > 1 else "fused", int(sys.argv[2]) if len(sys.argv) > 2 else 3000)
