"""The hidden-block op with given BN statistics (the distributed path) against the reference, same masks,
including the gradients with respect to the statistics."""
import pytest
import torch

from twoway_fast import reference

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from conftest import assert_close  # noqa: E402

ORDERS = [True, False]  # act_first: act_then_bn / bn_then_act


def inputs(batch, width, dtype, seed=5, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, width, generator=g, dtype=dtype) * 3 + 1
    gamma = torch.empty(width, dtype=dtype).uniform_(0.5, 1.5, generator=g)
    beta = torch.randn(width, generator=g, dtype=dtype)
    mean = torch.randn(width, generator=g, dtype=dtype)  # any statistics: they come from other rows too
    std = torch.empty(width, dtype=dtype).uniform_(0.5, 4.0, generator=g)
    tensors = [t.requires_grad_(requires_grad) for t in (z, gamma, beta, mean, std)]
    return (*tensors, torch.tensor([seed * 1000003, 2, 7], dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act_first", ORDERS)
@pytest.mark.parametrize("batch, width", [(1, 1), (1, 9), (3, 7), (64, 130), (129, 392)])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_matches_reference(batch, width, dtype, act_first, p):
    *tensors, state = inputs(batch, width, dtype)
    fused = ops.hidden_block_with_stats(*tensors, state, p, 0.3, act_first)
    ref = reference.hidden_block_with_stats(*tensors, state, p, 0.3, act_first)
    assert_close(fused, ref, dtype, "out")
    assert torch.equal(fused == 0, ref == 0) or width == 1, "identical dropout masks"
    grad = torch.randn_like(fused)
    got = torch.autograd.grad(fused, tensors, grad)
    want = torch.autograd.grad(ref, tensors, grad)
    for name, a, b in zip(("grad z", "grad gamma", "grad beta", "grad mean", "grad std"), got, want):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize("act_first", ORDERS)
def test_with_own_batch_statistics_equals_hidden_block(act_first):
    """Fed the batch's own statistics (differentiably), it is the hidden-block op, forward and backward."""
    z, gamma, beta, _, _, state = inputs(20, 11, torch.float64)
    u = torch.nn.functional.leaky_relu(z, 0.3) if act_first else z
    mean, std = u.mean(0), torch.sqrt(u.var(0, unbiased=False) + 1e-3)
    got = ops.hidden_block_with_stats(z, gamma, beta, mean, std, state, 0.5, 0.3, act_first)
    want = ops.hidden_block(z, gamma, beta, state, 0.5, 0.3, 1e-3, act_first)[0]
    assert_close(got, want, torch.float64, "out")
    grad = torch.randn_like(got)
    wrt = (z, gamma, beta)
    for a, b in zip(torch.autograd.grad(got, wrt, grad), torch.autograd.grad(want, wrt, grad)):
        assert_close(a, b, torch.float64, "grads")


@pytest.mark.parametrize("act_first", ORDERS)
def test_gradcheck_float64(act_first):
    *tensors, state = inputs(5, 9, torch.float64)
    torch.autograd.gradcheck(lambda *t: ops.hidden_block_with_stats(*t, state, 0.4, 0.3, act_first), tensors)


@pytest.mark.parametrize("act_first", ORDERS)
def test_opcheck(act_first):
    *tensors, state = inputs(5, 6, torch.float32)
    torch.library.opcheck(torch.ops.twoway_fast.hidden_block_with_stats.default, (*tensors, state, 0.5, 0.3, act_first))
    detached = [t.detach() for t in tensors]
    torch.library.opcheck(torch.ops.twoway_fast.hidden_block_with_stats_backward.default,
                          (torch.randn(5, 6), *detached, state, 0.5, 0.3, act_first))


def test_inputs_are_not_modified():
    *tensors, state = inputs(6, 5, torch.float64, requires_grad=False)
    before = [t.clone() for t in tensors]
    ops.hidden_block_with_stats(*tensors, state, 0.5, 0.3, True)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


@pytest.mark.parametrize("change, message", [
    (dict(z=torch.randn(4)), "2-D"),
    (dict(mean=torch.ones(4)), r"mean must have shape \(3\)"),
    (dict(std=torch.ones(3, dtype=torch.float64)), "std must have dtype Float"),
    (dict(state=torch.tensor([1, 2])), "rng_state"),
    (dict(p=1.0), r"\[0, 1\)"),
])
def test_bad_input_is_refused(change, message):
    args = dict(z=torch.randn(4, 3), mean=torch.zeros(3), std=torch.ones(3), state=torch.tensor([1, 2, 0]), p=0.5)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.twoway_fast.hidden_block_with_stats(args["z"], torch.ones(3), torch.zeros(3), args["mean"],
                                                      args["std"], args["state"], args["p"], 0.3, True)
