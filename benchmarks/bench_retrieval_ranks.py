"""retrieval_ranks against a full similarity matrix + argsort (torch) and the original evaluation
(scipy cdist correlation in float64 + argsort): time (pytest-benchmark) and peak extra memory (a fresh
process per method, see retrieval_memory.py). Numbers and commands: benchmarks/RESULTS.md.

Only 1k x 5k at d = 1024 by default; TWOWAY_BENCH_FULL=1 adds 5k x 25k and d = 3000 (the 5k x 25k
argsort baselines take minutes a round: they run one round)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval_baselines import METHODS, inputs_for, make_data

HERE = Path(__file__).parent
SIZES = {"1k x 5k, d=1024": (1000, 5000, 1024)}
if os.environ.get("TWOWAY_BENCH_FULL") == "1":  # minutes of CPU: not for `make bench` on every machine
    SIZES.update({"5k x 25k, d=1024": (5000, 25000, 1024), "1k x 5k, d=3000": (1000, 5000, 3000),
                  "5k x 25k, d=3000": (5000, 25000, 3000)})
ROUNDS = {"fused": 3, "torch": 2, "scipy": 1}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("size", list(SIZES))
def test_time(benchmark, size, method):
    n, m, d = SIZES[size]
    rounds = 1 if n >= 5000 and method != "fused" else ROUNDS[method]
    args = inputs_for(method, *make_data(n, m, d))
    benchmark.group = size
    ranks = benchmark.pedantic(METHODS[method], args=args, rounds=rounds, iterations=1, warmup_rounds=0)
    if method == "fused":
        return
    # The same ranks as the op (ties aside, which random data does not have).
    want = METHODS["fused"](*make_data(n, m, d))
    for got, ref in zip(ranks, want):
        agree = float((np.asarray(got) == ref.numpy()).mean())
        benchmark.extra_info.setdefault("agreement_with_fused", []).append(agree)
        assert agree > 0.999


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("size", list(SIZES))
def test_peak_memory(benchmark, size, method):
    """Runs once in a fresh process; pytest-benchmark times the whole process (not a speed figure)."""
    n, m, d = SIZES[size]
    benchmark.group = f"memory {size}"
    cmd = [sys.executable, str(HERE / "retrieval_memory.py"), method, str(n), str(m), str(d)]
    out = benchmark.pedantic(subprocess.check_output, args=(cmd,), kwargs={"cwd": HERE, "text": True}, rounds=1,
                             iterations=1)
    result = json.loads(out)
    benchmark.extra_info.update(result)
    print(f"\n{size} {method}: peak extra {result['peak_extra_mib']} MiB (inputs {result['inputs_mib']} MiB)")
