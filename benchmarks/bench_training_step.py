"""Full training step (forward, loss, backward, Nesterov SGD) per provider and shape; ratios from one
run with benchmarks/ratios.py. See benchmarks/RESULTS.md for the command and the numbers."""
import pytest

from training_step import PROVIDERS, make_step

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

# The paper's mnist architecture and the wide one (benchmarks/optimizer_step.py: the mnist preset's shape
# with each optimiser). mnist: minima of 60 rounds swung with the machine's load.
ROUNDS = {"mnist": 200, "wide": 6}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(ROUNDS))
def test_training_step(benchmark, shape, provider):
    benchmark.group = f"training step, {shape}"
    step = make_step(provider, shape)
    step()  # compiles compiled_reference
    benchmark.pedantic(step, rounds=ROUNDS[shape], iterations=1, warmup_rounds=2)
