"""The fused hidden-block op (BN + LeakyReLU + tied dropout) against the reference, same masks."""
import pytest
import torch

from twoway_fast import reference

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from conftest import assert_close  # noqa: E402

ORDERS = [True, False]  # act_first: act_then_bn / bn_then_act


def inputs(batch, width, dtype, seed=5, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(batch, width, generator=g, dtype=dtype) * 3 + 1).requires_grad_(requires_grad)
    gamma = torch.empty(width, dtype=dtype).uniform_(0.5, 1.5, generator=g).requires_grad_(requires_grad)
    beta = torch.randn(width, generator=g, dtype=dtype).requires_grad_(requires_grad)
    return z, gamma, beta, torch.tensor([seed * 1000003, 2, 0], dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act_first", ORDERS)
@pytest.mark.parametrize("batch, width", [(2, 1), (2, 392), (3, 7), (3, 50), (129, 1), (129, 7), (129, 50),
                                          (129, 392), (64, 130)])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_matches_reference(batch, width, dtype, act_first, p):
    z, gamma, beta, state = inputs(batch, width, dtype)
    args = (state, p, 0.3, 1e-3, act_first)
    fused = ops.hidden_block(z, gamma, beta, *args)
    ref = reference.hidden_block(z, gamma, beta, *args)
    for name, a, b in zip(("out", "mean", "std"), fused, ref):
        assert_close(a, b, dtype, name)
    assert torch.equal(fused[0] == 0, ref[0] == 0) or width == 1, "identical dropout masks"
    grad = torch.randn_like(z)
    got = torch.autograd.grad(fused[0], (z, gamma, beta), grad)
    want = torch.autograd.grad(ref[0], (z, gamma, beta), grad)
    for name, a, b in zip(("grad z", "grad gamma", "grad beta"), got, want):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize("act_first", ORDERS)
def test_gradcheck_float64(act_first):
    z, gamma, beta, state = inputs(6, 9, torch.float64)
    torch.autograd.gradcheck(lambda z, g, b: ops.hidden_block(z, g, b, state, 0.4, 0.3, 1e-3, act_first)[0],
                             (z, gamma, beta))


@pytest.mark.parametrize("act_first", ORDERS)
def test_opcheck(act_first):
    z, gamma, beta, state = inputs(5, 6, torch.float32)
    torch.library.opcheck(torch.ops.twoway_fast.hidden_block.default, (z, gamma, beta, state, 0.5, 0.3, 1e-3, act_first))
    grad = torch.randn(5, 6)
    mean, std = z.detach().mean(0), z.detach().std(0)
    torch.library.opcheck(torch.ops.twoway_fast.hidden_block_backward.default,
                          (grad, z.detach(), gamma.detach(), beta.detach(), mean, std, state, 0.5, 0.3, act_first))


def test_non_contiguous_input():
    z, gamma, beta, state = inputs(20, 10, torch.float64, requires_grad=False)
    zt = z.T.contiguous().T  # same values, column-major strides
    assert not zt.is_contiguous()
    assert torch.equal(ops.hidden_block(zt, gamma, beta, state, 0.5, 0.3, 1e-3, True)[0],
                       ops.hidden_block(z, gamma, beta, state, 0.5, 0.3, 1e-3, True)[0])


@pytest.mark.parametrize("change, message", [
    (dict(z=torch.randn(4)), "2-D"),
    (dict(z=torch.randn(1, 3)), "at least 2 rows"),
    (dict(gamma=torch.ones(4)), r"gamma must have shape \(3\)"),
    (dict(beta=torch.ones(3, dtype=torch.float64)), "beta must have dtype Float"),
    (dict(state=torch.tensor([1, 2])), "rng_state"),
    (dict(p=1.0), r"\[0, 1\)"),
    (dict(z=torch.ones(4, 3, dtype=torch.int64)), "floating point"),
])
def test_bad_input_is_refused(change, message):
    args = dict(z=torch.randn(4, 3), gamma=torch.ones(3), beta=torch.zeros(3), state=torch.tensor([1, 2, 0]), p=0.5)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.twoway_fast.hidden_block(args["z"], args["gamma"], args["beta"], args["state"], args["p"],
                                           0.3, 1e-3, True)


def test_torch_compile_fullgraph_matches_eager():
    z, gamma, beta, state = inputs(16, 12, torch.float32)

    def f(z, gamma, beta):
        out, mean, std = ops.hidden_block(z * 2, gamma, beta, state, 0.5, 0.3, 1e-3, True)
        return (out * out).sum() + mean.sum() + std.sum()

    compiled = torch.compile(f, fullgraph=True)
    want = torch.autograd.grad(f(z, gamma, beta), (z, gamma, beta))
    got = torch.autograd.grad(compiled(z, gamma, beta), (z, gamma, beta))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA_TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-10),
                  torch.bfloat16: dict(rtol=2e-2, atol=3e-2), torch.float16: dict(rtol=5e-3, atol=5e-3)}


@cuda
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCE))
@pytest.mark.parametrize("act_first", ORDERS)
@pytest.mark.parametrize("batch, width", [(2, 1), (3, 7), (129, 50), (128, 392), (64, 1000)])
def test_cuda_matches_reference(batch, width, dtype, act_first):
    """The CUDA kernel against the float64 reference on the CPU, same masks."""
    z, gamma, beta, state = inputs(batch, width, torch.float64)
    ref = reference.hidden_block(z, gamma, beta, state, 0.5, 0.3, 1e-3, act_first)
    grad = torch.randn_like(z)
    want = torch.autograd.grad(ref[0], (z, gamma, beta), grad)
    dev = [t.detach().to("cuda", dtype).requires_grad_() for t in (z, gamma, beta)]
    fused = ops.hidden_block(*dev, state.cuda(), 0.5, 0.3, 1e-3, act_first)
    got = torch.autograd.grad(fused[0], dev, grad.to("cuda", dtype))
    tol = CUDA_TOLERANCE[dtype]
    assert torch.equal((fused[0] == 0).cpu(), ref[0] == 0) or width == 1, "identical dropout masks"
    for name, a, b in zip(("out", "mean", "std", "grad z", "grad gamma", "grad beta"), [*fused, *got], [*ref, *want]):
        scale = b.abs().max().clamp_min(1).item()  # gradients of 129 rows: compare relative to their size
        torch.testing.assert_close(a.double().cpu() / scale, b.detach() / scale, **tol, msg=lambda m: f"{name}: {m}")


@cuda
def test_cuda_opcheck():
    z, gamma, beta, state = (t.cuda() for t in inputs(5, 6, torch.float32, requires_grad=False))
    z.requires_grad_(), gamma.requires_grad_(), beta.requires_grad_()
    torch.library.opcheck(torch.ops.twoway_fast.hidden_block.default, (z, gamma, beta, state, 0.5, 0.3, 1e-3, True))
