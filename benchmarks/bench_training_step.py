"""Full training step (forward, loss, backward, Nesterov SGD) per provider and shape; ratios from one
run with benchmarks/ratios.py. See benchmarks/RESULTS.md for the command and the numbers."""
import pytest

from training_step import PROVIDERS, SHAPES, make_step

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

ROUNDS = {"mnist": 200, "wide": 6}  # mnist: minima of 60 rounds swung with the machine's load


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_training_step(benchmark, shape, provider):
    benchmark.group = f"training step, {shape}"
    step = make_step(provider, shape)
    step()  # compiles compiled_reference
    benchmark.pedantic(step, rounds=ROUNDS[shape], iterations=1, warmup_rounds=2)
