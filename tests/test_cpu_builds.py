"""The network op's passes, the loss op's sums and the SGD step op's update have two CPU builds, the
baseline (x86-64-v2) and AVX-512, chosen at run time (csrc/cpu/cpu_builds.h); both must give the same
bits. One forward and backward of the network and the loss, then two direct SGD steps, per preset
order and with the log mid-way term, run in two processes, one kept to the baseline with
TWOWAY_FAST_BASELINE_ONLY=1."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}

# Odd widths (1, 7, 50, 1000: vector tails) and batch 129; dropout on every position.
STEP = """
import sys, torch
from twoway_fast import TwoWayNet
from twoway_fast.step.direct import DirectStep
from twoway_fast.loss import TwoWayLoss
results = {}
for order, decorrelation, midway in (("act_then_bn", "correlation", "sum"), ("bn_then_act", "second_moment", "sum"),
                                     ("act_then_bn", "correlation", "log")):
    torch.manual_seed(0)
    model = TwoWayNet(50, 1000, [7, 392, 1], order=order, dropout=0.5, backend="fused")
    x = torch.randn(129, 50, requires_grad=True)
    y = torch.randn(129, 1000, requires_grad=True)
    out = model(x, y, seed=5)
    terms = TwoWayLoss(model, decorrelation=decorrelation, midway=midway)(out, x, y)
    torch.autograd.backward([*out, terms.total], [*(torch.randn_like(o) for o in out), torch.ones(())])
    key = f"{order}, midway {midway}"
    results[key] = [*out, *terms, x.grad, y.grad, *(p.grad for p in model.parameters()), *model.buffers()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    step = DirectStep(model, TwoWayLoss(model, decorrelation=decorrelation, midway=midway), opt)
    for seed in range(2):  # the second step is the twoway_sgd_step op's
        step(x.detach(), y.detach(), seed)
    results[key] += [*model.parameters(), *(opt.state[p]["momentum_buffer"] for p in model.parameters())]
torch.save(results, sys.argv[1])
"""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def run_step(path: Path, baseline_only: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_CBWR="AUTO,STRICT")  # the GEMMs reproducible too
    env.pop("TWOWAY_FAST_BASELINE_ONLY", None)
    if baseline_only:
        env["TWOWAY_FAST_BASELINE_ONLY"] = "1"
    subprocess.run([sys.executable, "-c", STEP, str(path)], env=env, check=True)
    return torch.load(path)


@pytest.mark.skipif(not AVX512_FLAGS <= cpu_flags(), reason="this CPU runs the baseline build only")
def test_baseline_and_avx512_builds_agree(tmp_path):
    fast = run_step(tmp_path / "avx512.pt", baseline_only=False)
    baseline = run_step(tmp_path / "baseline.pt", baseline_only=True)
    for order, tensors in fast.items():
        assert len(tensors) == len(baseline[order])
        for i, (a, b) in enumerate(zip(tensors, baseline[order])):
            assert torch.equal(a, b), f"{order}: tensor {i} differs between the AVX-512 and baseline builds"
