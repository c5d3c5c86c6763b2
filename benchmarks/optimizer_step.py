"""The direct training step with each optimiser against the step's GEMM floor, on the mnist preset as users
run it (its hidden widths, default form and batch; `mnist` for the paper's architecture). Providers, their
rounds interleaved (one round of each in turn, so that load from other processes falls on all alike),
minimum per provider:
  direct_<opt>            DirectStep with that optimiser: one op call computes the gradients and applies the
                          update, each weight right after its gradient's GEMM (twoway_sgd_step /
                          twoway_adam_step)
  direct_<opt>_unfused    DirectStep with the same optimiser's own step after the gradients op
                          (twoway_step_gradients, then optimizer.step(); torch's fused=True update)
  gemm_floor              the step's matrix products alone on preallocated buffers
  gemm_floor_side_by_side the same products scheduled as the network op runs them (one channel a thread)
  direct_adam_bf16        DirectStep with Adam and the network's products in bfloat16 (train.precision "bf16")
  gemm_floor_bf16         the floor's products on bfloat16 operands
    python benchmarks/optimizer_step.py [rounds] [threads] [shape]"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_step import OPTIMIZERS, SHAPES, make_step  # noqa: E402


def main(rounds: int, shape: str) -> None:
    dx, hidden, dy, batch = SHAPES[shape]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, {shape} {dx}-{hidden}-{dy}, "
          f"batch {batch}, min of {rounds} rounds")
    steps = {floor: make_step(floor, shape) for floor in ("gemm_floor", "gemm_floor_side_by_side", "gemm_floor_bf16")}
    for opt in OPTIMIZERS:
        steps[f"direct_{opt}"] = make_step("direct_fused", shape, opt)
        steps[f"direct_{opt}_unfused"] = make_step("direct_fused_unfused_update", shape, opt)
    steps["direct_adam_bf16"] = make_step("direct_fused_bf16", shape, "adam")
    for step in steps.values():  # warm-up; the optimisers' first steps make their state
        step()
        step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t)
    floor, side = best["gemm_floor"], best["gemm_floor_side_by_side"]
    for name, t in best.items():
        print(f"  {name:24s} {t * 1e3:8.2f} ms  {t / floor:5.2f}x gemm_floor  {t / side:5.2f}x side by side")
    print(f"  bf16: direct_adam / direct_adam_bf16 {best['direct_adam'] / best['direct_adam_bf16']:.2f}x, "
          f"direct_adam_bf16 / gemm_floor_bf16 {best['direct_adam_bf16'] / best['gemm_floor_bf16']:.2f}x, "
          f"gemm_floor / gemm_floor_bf16 {floor / best['gemm_floor_bf16']:.2f}x")
    for opt in OPTIMIZERS:
        print(f"  {opt}: unfused / fused update {best[f'direct_{opt}_unfused'] / best[f'direct_{opt}']:.3f}x")


if __name__ == "__main__":
    args = sys.argv[1:]
    shape = next((a for a in args if a in SHAPES), "mnist_preset")
    numbers = [int(a) for a in args if a not in SHAPES]
    if len(numbers) > 1:
        torch.set_num_threads(numbers[1])
    main(numbers[0] if numbers else 30, shape)
