"""The fused network op (both channels, tied layers, hidden blocks, one K = 2B weight-gradient GEMM)
against the reference network walk, with identical dropout masks (same seed)."""
import pytest
import torch

from twoway_fast import reference

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from fused_pairs import close, grads, twin_models  # noqa: E402

# (batch, dx, hidden, dy, locally_dense, dropout): the odd shapes (batch 2, 3, 127, 129;
# widths 1, 7, 50, 392, 1000; locally dense M = 2 and 4), kept few so the suite stays quick.
CASES = [
    (2, 7, [1, 7], 7, None, 0.5),
    (3, 50, [7, 1, 7], 50, None, [0.5, 0.0, 0.5]),
    (127, 392, [50, 392], 1000, None, 0.5),
    (129, 1000, [392, 50, 392], 392, {0: 4, -1: 2}, [0.5, 0.0, 0.3]),
    (3, 8, [12, 4, 12], 8, {0: 4, 1: 2, 2: 2, 3: 4}, 0.5),
]
ORDERS = ["act_then_bn", "bn_then_act"]
DTYPES = [torch.float32, torch.float64]


def run(model, x, y, seed, cotangents):
    """Forward, then backward of a random linear functional of all six outputs (so each output's
    gradient path is checked), returning outputs, input grads, parameter grads and BN buffers."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = model(x, y, seed=seed)
    torch.autograd.backward(list(out), list(cotangents))
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return out, (x.grad, y.grad), grads(model), buffers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch, dx, hidden, dy, blocks, dropout", CASES)
def test_matches_reference(batch, dx, hidden, dy, blocks, dropout, order, dtype, threads):
    torch.manual_seed(1)
    ref, fused = twin_models(dx, dy, hidden, dtype, order=order, locally_dense=blocks, dropout=dropout)
    x, y = torch.randn(batch, dx, dtype=dtype), torch.randn(batch, dy, dtype=dtype)
    with torch.no_grad():
        shapes = [o.shape for o in ref(x, y, seed=11)]
    ref.load_state_dict(fused.state_dict())  # undo that call's running-statistics update
    cotangents = [torch.randn(s, dtype=dtype) for s in shapes]
    want = run(ref, x, y, 11, cotangents)
    got = run(fused, x, y, 11, cotangents)
    for name, a, b in zip(reference.TwoWayOutput._fields, got[0], want[0]):
        close(a, b, dtype, name)
        assert torch.equal(a == 0, b == 0) or name.endswith("hat") or name.endswith("pre"), f"{name}: same mask"
    for name, a, b in zip(("grad x", "grad y"), got[1], want[1]):
        close(a, b, dtype, name)
    for name in want[2]:
        if order == "bn_then_act" and "bias" in name and not name.endswith(str(len(hidden))):
            # The fused path skips the bias that batch norm cancels: its gradient is exactly 0,
            # the reference's is 0 up to rounding.
            assert torch.count_nonzero(got[2][name]) == 0, name
            close(got[2][name], want[2][name], dtype, name)
        else:
            close(got[2][name], want[2][name], dtype, f"grad {name}")
    for name in want[3]:
        close(got[3][name], want[3][name], dtype, name)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch, dx, hidden, dy, blocks, dropout", [CASES[1], CASES[3]])
def test_repr_linear_matches_reference(batch, dx, hidden, dy, blocks, dropout, order, threads):
    torch.manual_seed(5)
    dtype = torch.float64
    ref, fused = twin_models(dx, dy, hidden, dtype, order=order, locally_dense=blocks, dropout=dropout,
                             repr_linear=True)
    x, y = torch.randn(batch, dx, dtype=dtype), torch.randn(batch, dy, dtype=dtype)
    cotangents = [torch.randn(o.shape, dtype=dtype) for o in fused(x, y, seed=3)]
    ref.load_state_dict(fused.state_dict())
    want, got = run(ref, x, y, 3, cotangents), run(fused, x, y, 3, cotangents)
    for name, a, b in zip((*reference.TwoWayOutput._fields, "grad x", "grad y"), [*got[0], *got[1]],
                          [*want[0], *want[1]]):
        close(a, b, dtype, name)
    repr_bias = {f"x_bias.{fused.repr_layer}", f"y_bias.{fused.repr_layer}"}
    for part in (2, 3):  # parameter gradients, then running statistics
        for name in want[part]:
            if part == 2 and (order == "bn_then_act" and "bias" in name and not name.endswith(str(len(hidden)))
                              or name in repr_bias):
                # A bias straight in front of a batch norm (no bend between: bn_then_act, or the linear
                # code's): the norm cancels it, its gradient is exactly 0, the reference's 0 up to rounding.
                assert torch.count_nonzero(got[part][name]) == 0, name
            close(got[part][name], want[part][name], dtype, name)


def test_tied_masks_are_identical_in_both_channels():
    torch.manual_seed(2)
    _, fused = twin_models(16, 16, [32, 24, 32], torch.float32, dropout=0.5)
    out = fused(torch.randn(64, 16), torch.randn(64, 16), seed=5)
    dropped_x, dropped_y = out.hx == 0, out.hy == 0
    assert torch.equal(dropped_x, dropped_y)
    assert 0.3 < dropped_x.float().mean() < 0.7, "about half dropped at p = 0.5"
    assert not torch.equal(fused(torch.randn(64, 16), torch.randn(64, 16), seed=6).hx == 0, dropped_x)


def op_args(dtype, blocks=None, requires_grad=False, batch=4):
    """Arguments of ops.twoway_net for a small 2-Way Net (dx 4, hidden [6, 4, 6], dy 8)."""
    torch.manual_seed(3)
    _, net = twin_models(4, 8, [6, 4, 6], dtype, dropout=[0.4, 0.3, 0.4], locally_dense=blocks)
    bns = [*net.bn_x, *net.bn_y]
    tensors = [torch.randn(batch, 4, dtype=dtype), torch.randn(batch, 8, dtype=dtype),
               [w.detach().clone() for w in net.weights], [b.detach().clone() for b in [*net.x_bias, *net.y_bias]],
               [bn.gamma.detach().clone() for bn in bns], [bn.beta.detach().clone() for bn in bns]]
    if requires_grad:
        for t in tensors[:2]:
            t.requires_grad_()
        for group in tensors[2:]:
            for t in group:
                t.requires_grad_()
    # A slope per position, each its own, so that a kernel reading another position's slope fails.
    return (*tensors, reference.rng_states(torch.tensor(77), 3), net.dropout, 1, [0.3, 1.0, 0.2], 1e-3)


@pytest.mark.parametrize("act_first", [True, False])
@pytest.mark.parametrize("blocks", [None, {0: 2, 3: 2}])
def test_gradcheck_float64(act_first, blocks):
    args = op_args(torch.float64, blocks, requires_grad=True)
    x, y, weights, bias, gamma, beta, *rest = args
    n_w, n_b, n_g = len(weights), len(bias), len(gamma)

    def outputs(x, y, *params):
        w, b = list(params[:n_w]), list(params[n_w:n_w + n_b])
        g, be = list(params[n_w + n_b:n_w + n_b + n_g]), list(params[n_w + n_b + n_g:])
        return ops.twoway_net(x, y, w, b, g, be, *rest, act_first)[:6]

    torch.autograd.gradcheck(outputs, (x, y, *weights, *bias, *gamma, *beta))


@pytest.mark.parametrize("act_first", [True, False])
def test_opcheck(act_first):
    args = (*op_args(torch.float32, {0: 2}, requires_grad=True), act_first)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_net.default, args)
    outs = ops.twoway_net(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    x, y, weights, bias, gamma, beta, states, p, repr_layer, leak, eps, _ = args
    detach = lambda ts: [t.detach() for t in ts]  # noqa: E731
    grads = [torch.randn_like(o) for o in outs[:6]]
    torch.library.opcheck(torch.ops.twoway_fast.twoway_net_backward.default,
                          (*grads, x.detach(), y.detach(), detach(weights), detach(gamma), detach(beta), states, p,
                           repr_layer, leak, act_first, *outs[6:], True))


def test_rejects_bad_input():
    x, y, weights, bias, gamma, beta, states, p, r, leak, eps = op_args(torch.float32)
    with pytest.raises(RuntimeError, match=r"weights\[1\] must take width 6"):
        ops.twoway_net(x, y, [weights[0], weights[1].T, *weights[2:]], bias, gamma, beta, states, p, r, leak, eps,
                       True)
    with pytest.raises(RuntimeError, match=r"leak must hold one LeakyReLU slope per hidden position \(3\), got 2"):
        ops.twoway_net(x, y, weights, bias, gamma, beta, states, p, r, leak[:2], eps, True)
    with pytest.raises(RuntimeError, match=r"leak must hold finite slopes, got nan"):
        ops.twoway_net(x, y, weights, bias, gamma, beta, states, p, r, [0.3, float("nan"), 0.3], eps, True)
    with pytest.raises(RuntimeError, match=r"rng_states must be int64 of shape \(3, 3\)"):
        ops.twoway_net(x, y, weights, bias, gamma, beta, states[:2], p, r, leak, eps, True)
    with pytest.raises(RuntimeError, match=r"gamma\[4\] must have shape \(4\)"):
        ops.twoway_net(x, y, weights, bias, [*gamma[:4], gamma[0], gamma[5]], beta, states, p, r, leak, eps, True)
    with pytest.raises(RuntimeError, match="dropout probability must be in"):
        ops.twoway_net(x, y, weights, bias, gamma, beta, states, [0.5, 1.0, 0.5], r, leak, eps, True)
    with pytest.raises(RuntimeError, match="at least 2 rows"):
        ops.twoway_net(x[:1], y[:1], weights, bias, gamma, beta, states, p, r, leak, eps, True)
    with pytest.raises(RuntimeError, match="weights\\[0\\] must have dtype Float like x"):
        ops.twoway_net(x, y, [weights[0].double(), *weights[1:]], bias, gamma, beta, states, p, r, leak, eps, True)


def test_backward_rejects_bad_output_gradient(threads):
    x, y, weights, bias, gamma, beta, states, p, r, leak, eps = op_args(torch.float32)
    out = ops.twoway_net(x, y, weights, bias, gamma, beta, states, p, r, leak, eps, True)
    g_x_hat, g_y_hat = torch.randn_like(out[0]), torch.randn_like(out[1])
    rest = (x, y, weights, gamma, beta, states, p, r, leak, True, *out[6:], True)
    for grad_x_hat, grad_y_hat, name in [(g_x_hat[:, :3], g_y_hat, "grad_x_hat"), (g_x_hat, g_y_hat[1:], "grad_y_hat")]:
        with pytest.raises(RuntimeError, match=f"{name} must have shape"):
            torch.ops.twoway_fast.twoway_net_backward.default(grad_x_hat, grad_y_hat, None, None, None, None, *rest)
