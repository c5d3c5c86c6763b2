"""Data-parallel training (twoway_fast.distributed, twoway_fast.backends.synced): 2 gloo ranks on the CPU
against 1 process.

Each 2-rank test spawns 2 processes (a few seconds each: they import torch). With synchronised statistics
2 ranks of B rows must train exactly like 1 process of 2B rows (float64: only the order of the sums
differs); with local statistics they must not, and must still learn.
"""
import subprocess
import sys

import pytest
import torch

from twoway_fast import TwoWayNet, reference, run
from twoway_fast.backends import resolve_backend, synced
from twoway_fast.backends.synced import column_stats
from twoway_fast.distributed import Ranks

from distributed_runs import free_port, spawn, train_and_save, trainer, weights

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

# float64 after 20 SGD steps: the two runs differ only in how the column sums are split and added.
TOLERANCE = dict(rtol=1e-9, atol=1e-11)


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same_weights(got: dict, want: dict, what: str):
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOLERANCE, msg=lambda m: f"{what}, {k}: {m}")


@pytest.mark.parametrize("backend, order, form, midway, repr_affine", [
    ("fused", "act_then_bn", "second_moment", "sum", True),
    ("fused", "bn_then_act", "correlation", "sum", True),
    ("reference", "act_then_bn", "correlation", "sum", True),
    # The log mid-way term's d_i over both ranks' rows; with fixed-scale codes, its intended use (with a learned
    # gamma at the representation these runs shrink it to NaN, in one process too: docs/method.md#loss-variants).
    ("fused", "act_then_bn", "correlation", "log", False),
    ("reference", "bn_then_act", "second_moment", "log", False),
])
def test_two_ranks_with_synced_statistics_train_like_one_batch(tmp_path, backend, order, form, midway, repr_affine):
    settings = dict(backend=backend, order=order, form=form, midway=midway, repr_affine=repr_affine)
    spawn(train_and_save, 2, tmp_path, **settings)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = trainer(**settings)
    start = weights(one.model)
    one.fit()
    want = weights(one.model)
    assert max_difference(want, start) > 1e-2, "the 20 steps must move the weights well beyond the tolerance"
    for r, state in enumerate(ranks):
        assert_same_weights(state["weights"], want, f"rank {r} after 20 steps vs 1 process of 2B rows")
    for got, ref in zip(ranks[0]["log"], one.log):  # the logged terms are the mean over ranks, like 1 process
        assert got["train"] == pytest.approx(ref["train"], rel=1e-9)


def test_local_statistics_differ_from_one_batch_and_converge(tmp_path):
    """Without synchronisation each rank normalises its own 8 rows: not the 16-row batch (so the test
    above can tell the two apart), and training still lowers the validation loss on the digits halves."""
    spawn(train_and_save, 2, tmp_path, sync_stats=False, epochs=6, val=True, dtype=torch.float32)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert max_difference(ranks[0]["weights"], ranks[1]["weights"]) == 0, "ranks hold one model"
    one = trainer(epochs=6, val=True, dtype=torch.float32)
    one.fit()
    assert max_difference(ranks[0]["weights"], weights(one.model)) > 1e-3
    log = ranks[0]["log"]
    first, last = log[0]["val"], log[-1]["val"]
    assert last["total"] < 0.8 * first["total"], [row["val"]["total"] for row in log]
    assert last["total_correlation"] > first["total_correlation"]


def resume_in_one_process(run_dir):
    t = trainer(run_dir, epochs=2)
    t.resume()
    assert t.epoch == 1
    t.fit()
    return weights(t.model)


def test_resume_from_two_process_checkpoint_in_one_process(tmp_path):
    spawn(train_and_save, 2, tmp_path, run_dir=str(tmp_path / "run"), epochs=1)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {run.LAST, run.BEST, run.METRICS}
    resumed = resume_in_one_process(tmp_path / "run")
    straight = trainer(epochs=2)
    straight.fit()
    assert_same_weights(resumed, weights(straight.model), "2 ranks for epoch 1, then 1 process for epoch 2")


def test_cli_nproc_launches_torchrun(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "twoway_fast", "train", "--data", "digits", "--out", str(out), "--nproc", "2",
               "--epochs", "1", "--batch-size", "64", "--set", "model.hidden=[16,8,16]", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run folder" in done.stdout  # printed once, by rank 0
    assert done.stdout.count("run folder") == 1
    assert len(run.read_metrics(out)) == 1 and (out / run.LAST).exists()


def test_batch_must_split_evenly():
    with pytest.raises(ValueError, match="batch_size 15 .* must divide by the number of processes, 2"):
        Ranks(0, 2).local_rows(15)


def test_shard_takes_a_contiguous_slice_per_rank():
    index = torch.arange(12)
    assert torch.equal(torch.cat([Ranks(r, 3).shard(index) for r in range(3)]), index)
    assert Ranks(1, 3).first_row(4) == 4


@pytest.fixture
def one_rank_group():
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield torch.distributed.group.WORLD
    torch.distributed.destroy_process_group()


def test_column_stats_keep_float32_spread_under_a_large_mean(one_rank_group):
    """Sums and sums of squares would cancel in float32 here (mean 1e4, std 1e-2); in float64 they do not."""
    u = (1e4 + 1e-2 * torch.randn(64, 5, dtype=torch.float64)).float()
    shift = torch.zeros(5, dtype=torch.float64)  # the running mean before the first step
    (mean, std), = column_stats([u], [shift], 1e-8, one_rank_group)
    want = u.double()
    torch.testing.assert_close(mean.double(), want.mean(0), rtol=1e-7, atol=0)
    torch.testing.assert_close(std.double(), torch.sqrt(want.var(0, unbiased=False) + 1e-8), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend, order", [("fused", "act_then_bn"), ("fused", "bn_then_act"),
                                            ("reference", "bn_then_act")])
def test_synced_forward_on_one_rank_is_the_plain_forward(one_rank_group, backend, order):
    """The channels-in-lockstep walk of synced.forward against reference.forward (one rank: the same
    statistics), outputs, batch statistics and gradients, with dropout and an offset first row."""
    model = TwoWayNet(6, 5, [7, 3, 4], order=order, dropout=[0.5, 0.2, 0.5], backend=backend).double()
    x, y, seed = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64), torch.tensor(3)
    got, got_stats = synced.forward(model, x, y, seed, 4, backend, one_rank_group)
    want, want_stats = reference.forward(model, x, y, seed, 4)
    assert got_stats.keys() == want_stats.keys()
    for name, a, b in zip(got._fields, got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    for key in want_stats:
        for a, b in zip(got_stats[key], want_stats[key]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"stats {key}: {m}")
    weights = [torch.randn_like(t) for t in want]
    names, params = zip(*model.named_parameters())
    grads = [torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, out)), params) for out in (got, want)]
    for name, a, b in zip(names, *grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"grad of {name}: {m}")


def test_synced_model_trains_on_one_row_per_rank(one_rank_group):
    model = TwoWayNet(6, 5, [7, 3, 4], dropout=0.0)
    model.stats_group = one_rank_group
    out = model(torch.randn(1, 6), torch.randn(1, 5), seed=1)
    assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_synced_log_midway_on_one_rank_is_the_plain_loss(one_rank_group, backend):
    """synced.loss with the log mid-way term (d_i from all-reduced column sums) against the backend's own
    loss on one rank: the same terms and gradients."""
    model = TwoWayNet(6, 5, [7, 3, 4], dropout=[0.5, 0.2, 0.5], backend=backend).double()
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    out = model(x, y, seed=2)
    backend_loss = resolve_backend(backend, x.device).loss
    kwargs = dict(lh=1.5, lc=0.5, lxy=0.7, lu=0.9, midway_form="log", decorrelation_form="correlation",
                  decorrelation_input="after_dropout", decorrelation_eps=1e-5)
    got = synced.loss(backend_loss, out, x, y, list(model.weights), model.gammas(), group=one_rank_group, **kwargs)
    want = backend_loss(out, x, y, list(model.weights), model.gammas(), **kwargs)
    for name, a, b in zip(got._fields, got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(got.total, params, retain_graph=True), torch.autograd.grad(want.total, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
