"""The training-step comparison of bench_training_step.py, with the providers' rounds interleaved
(one round of each in turn), so that load from other processes, which comes and goes, falls on all
of them alike; reports the minimum per provider and the ratios:
    python benchmarks/interleaved.py [rounds_mnist] [rounds_wide] [threads]      (0 rounds: skip)
(benchmarks/optimizer_step.py compares the optimisers on the mnist preset's own shape.)"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_step import PROVIDERS, SHAPES, make_step  # noqa: E402


def main(rounds: dict[str, int]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch 128, min of rounds")
    for shape in SHAPES:
        if not rounds.get(shape):  # 0 rounds: skip the shape (and its compilation)
            continue
        steps = {p: make_step(p, shape) for p in PROVIDERS}
        for step in steps.values():  # warm-up (and compilation)
            step()
            step()
        best = dict.fromkeys(PROVIDERS, float("inf"))
        for _ in range(rounds[shape]):
            for p, step in steps.items():
                t = time.perf_counter()
                step()
                best[p] = min(best[p], time.perf_counter() - t)
        print(f"{shape} ({rounds[shape]} rounds): " + ", ".join(f"{p} {t * 1e3:.2f} ms" for p, t in best.items()))
        print(f"  reference / fused {best['reference'] / best['fused']:.2f}x, compiled_reference / fused "
              f"{best['compiled_reference'] / best['fused']:.2f}x, fused / gemm_floor "
              f"{best['fused'] / best['gemm_floor']:.2f}x, compiled_fused / gemm_floor "
              f"{best['compiled_fused'] / best['gemm_floor']:.2f}x")
        print(f"  fused / direct_fused {best['fused'] / best['direct_fused']:.2f}x, compiled_reference / "
              f"direct_fused {best['compiled_reference'] / best['direct_fused']:.2f}x, direct_fused / gemm_floor "
              f"{best['direct_fused'] / best['gemm_floor']:.2f}x, direct_fused / gemm_floor_side_by_side "
              f"{best['direct_fused'] / best['gemm_floor_side_by_side']:.2f}x")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    if len(args) > 2:
        torch.set_num_threads(args[2])
    main({"mnist": args[0] if args else 100, "wide": args[1] if len(args) > 1 else 5})
