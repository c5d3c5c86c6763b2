"""The CUDA network and loss ops against the CPU ops and the reference, with identical dropout masks
(same seed, so the same rng_states): outputs and every gradient, float32 tight, bfloat16 and float16
(explicit and under torch.autocast) within HALF_TOLERANCE of the float32 reference; opcheck on CUDA; a
training step captured in a CUDA graph against the same step run eagerly. Skipped without a GPU
(scripts/gpu_check.sh runs them on one)."""
import copy

import pytest
import torch

import twoway_fast
from twoway_fast import reference

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from twoway_fast.backends import fused  # noqa: E402
from twoway_fast.loss_terms import LossTerms  # noqa: E402

from fused_pairs import close, twin_models  # noqa: E402
from test_twoway_loss import COEFFICIENTS, VARIANTS, loss_inputs, options  # noqa: E402
from test_twoway_net import CASES, DTYPES, ORDERS, op_args, run  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Half-precision runs against the float32 reference on the same (rounded) inputs and parameters: the
# allowed error relative to the compared tensor's largest entry (at least 1). A layer rounds its GEMM
# output and activations once each (unit roundoff 2^-9 for bfloat16, 2^-12 for float16); a few layers
# forward and back, and batch norm dividing by the batch spread, grow that to this order.
HALF_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
HALF_CASES = [CASES[2], CASES[3]]  # batches of 127 and 129: statistics not dominated by one row


def close_half(actual, expected, dtype, what):
    tol = HALF_TOLERANCE[dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def rounded_to(value, dtype):
    """A tensor (keeping requires_grad, as a leaf) or a list/tuple of them, rounded to dtype and back."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype).to(value.dtype).requires_grad_(value.requires_grad)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(rounded_to(v, dtype) for v in value))
    return type(value)(rounded_to(v, dtype) for v in value)


def to_cuda(value):
    """A tensor (keeping requires_grad, as a leaf), or a list/tuple of them, on the GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cuda().requires_grad_(value.requires_grad)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(to_cuda(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_cuda(v) for v in value)
    return value


def flatten(result):
    """run()'s (outputs, input grads, parameter grads, buffers) as (name, tensor) pairs on the CPU."""
    out, inputs, params, buffers = result
    pairs = [*zip(reference.TwoWayOutput._fields, out), *zip(("grad x", "grad y"), inputs),
             *((f"grad {k}", v) for k, v in params.items()), *buffers.items()]
    return [(name, t.detach().cpu()) for name, t in pairs]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch, dx, hidden, dy, blocks, dropout", CASES)
@pytest.mark.parametrize("repr_linear", [False, True])
def test_network_matches_cpu_op_and_reference(batch, dx, hidden, dy, blocks, dropout, order, dtype, repr_linear):
    torch.manual_seed(1)
    ref, fused = twin_models(dx, dy, hidden, dtype, order=order, locally_dense=blocks, dropout=dropout,
                             repr_linear=repr_linear)
    gpu = copy.deepcopy(fused).cuda()
    x, y = torch.randn(batch, dx, dtype=dtype), torch.randn(batch, dy, dtype=dtype)
    with torch.no_grad():
        shapes = [o.shape for o in fused(x, y, seed=11)]
    fused.load_state_dict(gpu.state_dict())  # undo that call's running-statistics update
    cotangents = [torch.randn(s, dtype=dtype) for s in shapes]
    got = flatten(run(gpu, x.cuda(), y.cuda(), 11, [c.cuda() for c in cotangents]))
    for what, model in (("CPU op", fused), ("reference", ref)):
        want = flatten(run(model, x, y, 11, cotangents))
        assert [n for n, _ in got] == [n for n, _ in want]
        for (name, a), (_, b) in zip(got, want):
            close(a, b, dtype, f"{name} vs the {what}")
        for (name, a), (_, b) in zip(got[:6], want[:6]):  # the outputs: the same elements dropped
            assert torch.equal(a == 0, b == 0) or name.endswith("hat") or name.endswith("pre"), name


@pytest.mark.parametrize("dtype", HALF_TOLERANCE)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch, dx, hidden, dy, blocks, dropout", HALF_CASES)
def test_network_in_half_precision_matches_float32_reference(batch, dx, hidden, dy, blocks, dropout, order, dtype):
    """The network op on bfloat16/float16 models and views against the float32 reference with the same
    (rounded) parameters and inputs; float32 statistics, outputs in the views' dtype."""
    torch.manual_seed(1)
    ref, _ = twin_models(dx, dy, hidden, torch.float32, order=order, locally_dense=blocks, dropout=dropout)
    with torch.no_grad():
        for t in ref.parameters():
            t.copy_(rounded_to(t, dtype))
    gpu = copy.deepcopy(ref).to(dtype).cuda()
    gpu.backend = "fused"
    x, y = rounded_to(torch.randn(batch, dx), dtype), rounded_to(torch.randn(batch, dy), dtype)
    with torch.no_grad():
        shapes = [o.shape for o in copy.deepcopy(ref)(x, y, seed=11)]
    cotangents = [rounded_to(torch.randn(s), dtype) for s in shapes]
    result = run(gpu, x.to(dtype).cuda(), y.to(dtype).cuda(), 11, [c.to(dtype).cuda() for c in cotangents])
    assert all(o.dtype == dtype for o in result[0])
    got, want = flatten(result), flatten(run(ref, x, y, 11, cotangents))
    assert [n for n, _ in got] == [n for n, _ in want]
    for (name, a), (_, b) in zip(got, want):
        close_half(a, b, dtype, name)
    for (name, a), (_, b) in zip(got[2:4], want[2:4]):  # hx, hy: the same elements dropped
        assert torch.equal(a == 0, b == 0), name


def test_network_under_autocast_runs_in_bfloat16():
    """Under torch.autocast the fused forward runs the network op in bfloat16 and the loss op in float32;
    a training step's parameter gradients match the float32 reference's."""
    torch.manual_seed(2)
    ref, fused_model = twin_models(392, 1000, [50, 392], torch.float32, dropout=0.5)
    gpu = copy.deepcopy(fused_model).cuda()
    x, y = torch.randn(127, 392), torch.randn(127, 1000)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda(), y.cuda(), seed=11)
        terms = twoway_fast.TwoWayLoss(gpu)(out, x.cuda(), y.cuda())
    assert out.x_hat.dtype == torch.bfloat16 and terms.total.dtype == torch.float32
    terms.total.backward()
    ref_terms = twoway_fast.TwoWayLoss(ref)(ref(x, y, seed=11), x, y)
    ref_terms.total.backward()
    close_half(torch.stack(list(terms)).detach().cpu(), torch.stack(list(ref_terms)).detach(), torch.bfloat16,
               "terms")
    for (name, a), (_, b) in zip(gpu.named_parameters(), ref.named_parameters()):
        assert a.grad.dtype == torch.float32, name
        close_half(a.grad.cpu(), b.grad, torch.bfloat16, f"grad {name}")


def loss_terms_and_grads(loss, out, x, y, weights, gammas, kwargs, term_weights):
    """The loss terms and the gradient of terms @ term_weights for every input, on the CPU."""
    terms = torch.stack(list(loss(reference.TwoWayOutput(*out), x, y, weights, gammas, **kwargs)))
    inputs = (*out, *weights, *gammas)
    grads = torch.autograd.grad(terms @ term_weights.to(terms.device, terms.dtype), inputs, allow_unused=True)
    return [terms.detach().cpu(), *(None if g is None else g.cpu() for g in grads)]


@pytest.mark.parametrize("dtype", HALF_TOLERANCE)
@pytest.mark.parametrize("midway", ["sum", "log"])
@pytest.mark.parametrize("form, where", VARIANTS)
def test_loss_in_half_precision_matches_float32_reference(form, where, midway, dtype):
    """The loss op on bfloat16/float16 inputs (float32 terms and decorrelation matrices, sums in double)
    against the float32 reference on the same rounded inputs."""
    out, x, y, weights, gammas = rounded_to(loss_inputs(129, 392, 1000, 50, torch.float32, blocks=True), dtype)
    kwargs = dict(**COEFFICIENTS, midway_form=midway, decorrelation_form=form, decorrelation_input=where,
                  decorrelation_eps=1e-5)
    term_weights = torch.randn(len(reference.LossTerms._fields))
    half = [tuple(t.to(dtype) for t in out), x.to(dtype), y.to(dtype), [w.to(dtype) for w in weights],
            [g.to(dtype) for g in gammas]]
    got = loss_terms_and_grads(fused.loss, *to_cuda(half), kwargs, term_weights)
    want = loss_terms_and_grads(reference.loss, tuple(out), x, y, weights, gammas, kwargs, term_weights)
    assert got[0].dtype == torch.float32  # the terms; the gradients are in the inputs' dtype
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, f"gradient {i}"
        else:
            close_half(a, b, dtype, "terms" if i == 0 else f"gradient {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("midway", ["sum", "log"])
@pytest.mark.parametrize("form, where", VARIANTS)
@pytest.mark.parametrize("batch, dx, dy, k", [(2, 7, 1, 4), (129, 392, 1000, 50), (127, 50, 7, 392), (3, 4, 6, 5),
                                              (257, 33, 9, 50)])
def test_loss_matches_cpu_op_and_reference(batch, dx, dy, k, form, where, midway, dtype):
    out, x, y, weights, gammas = loss_inputs(batch, dx, dy, k, dtype, blocks=k % 2 == 0)
    kwargs = dict(**COEFFICIENTS, midway_form=midway, decorrelation_form=form, decorrelation_input=where,
                  decorrelation_eps=1e-5)
    term_weights = torch.randn(len(reference.LossTerms._fields), dtype=dtype)
    got = loss_terms_and_grads(fused.loss, *to_cuda((tuple(out), x, y, weights, gammas)), kwargs, term_weights)
    for what, loss in (("CPU op", fused.loss), ("reference", reference.loss)):
        want = loss_terms_and_grads(loss, tuple(out), x, y, weights, gammas, kwargs, term_weights)
        for i, (a, b) in enumerate(zip(got, want)):
            if b is None:  # an input this variant does not use: the op's gradient is zero
                assert a is None or torch.count_nonzero(a) == 0, f"gradient {i} vs the {what}"
            else:
                close(a, b, dtype, f"{'terms' if i == 0 else f'gradient {i}'} vs the {what}")


@pytest.mark.parametrize("midway_log", [False, True])
def test_loss_sums_are_deterministic(midway_log):
    """The reduction kernels add fixed partials in a fixed order (no atomics): the same inputs give the
    same bits."""
    out, x, y, weights, gammas = to_cuda(loss_inputs(129, 392, 1000, 50, torch.float32, blocks=True))
    args = (x, y, *[t.detach() for t in out], weights, gammas, list(COEFFICIENTS.values()), options(midway_log, True),
            1e-5)
    first, second = ops.twoway_loss(*args)[0], ops.twoway_loss(*args)[0]
    assert torch.equal(first, second)


def test_loss_refuses_more_tensors_than_its_sum_table_holds():
    out, x, y, weights, gammas = to_cuda(loss_inputs(4, 3, 5, 6, torch.float32))
    many_gammas = [g.detach() for g in gammas] * 30  # 2 sums each: beyond the table's 64 entries
    with pytest.raises(RuntimeError, match="the CUDA twoway_loss takes at most 64 sums"):
        ops.twoway_loss(x, y, *[t.detach() for t in out], [w.detach() for w in weights], many_gammas,
                        list(COEFFICIENTS.values()), 0, 1e-5)


@pytest.mark.parametrize("act_first", [True, False])
def test_network_opcheck(act_first):
    args = (*to_cuda(op_args(torch.float32, {0: 2}, requires_grad=True)), act_first)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_net.default, args)
    outs = ops.twoway_net(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    x, y, weights, bias, gamma, beta, states, p, repr_layer, leak, eps, _ = args
    detach = lambda ts: [t.detach() for t in ts]  # noqa: E731
    grads = [torch.randn_like(o) for o in outs[:6]]
    torch.library.opcheck(torch.ops.twoway_fast.twoway_net_backward.default,
                          (*grads, x.detach(), y.detach(), detach(weights), detach(gamma), detach(beta), states, p,
                           repr_layer, leak, act_first, *outs[6:], True))


@pytest.mark.parametrize("midway_log", [False, True])
@pytest.mark.parametrize("correlation", [False, True])
def test_loss_opcheck(correlation, midway_log):
    out, x, y, weights, gammas = to_cuda(loss_inputs(4, 3, 5, 6, torch.float32))
    coefficients = list(COEFFICIENTS.values())
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss.default,
                          (x, y, *out, weights, gammas, coefficients, options(midway_log, correlation), 1e-5))
    detached = [t.detach() for t in out]
    weights, gammas = [w.detach() for w in weights], [g.detach() for g in gammas]
    _, cx, cy = ops.twoway_loss(x, y, *detached, weights, gammas, coefficients, options(midway_log, correlation),
                                1e-5)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss_backward.default,
                          (torch.randn(len(LossTerms._fields), device="cuda"), x, y, *detached, weights, gammas, cx,
                           cy, coefficients, options(midway_log, correlation), 1e-5))


def test_graph_captured_step_equals_eager_step():
    """Forward, loss, backward and an SGD step captured once in a CUDA graph and replayed with new
    seeds give the parameters (and BN statistics) of the same steps run eagerly."""
    torch.manual_seed(5)
    model = twoway_fast.TwoWayNet(16, 12, [32, 8, 32], dropout=0.3, backend="fused").cuda()
    x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 12, device="cuda")
    seed = torch.zeros((), dtype=torch.int64, device="cuda")

    def make_step(net):
        loss_fn = twoway_fast.TwoWayLoss(net)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)

        def step():
            opt.zero_grad(set_to_none=False)
            loss_fn(net(x, y, seed=seed), x, y).total.backward()
            opt.step()
        return step

    graph_step = make_step(model)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (cuBLAS handles, autograd) off the capturing stream
        for _ in range(3):
            graph_step()
    torch.cuda.current_stream().wait_stream(side)
    eager = copy.deepcopy(model)  # the state the replays start from
    eager_step = make_step(eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_step()
    for s in (101, 102, 103):
        seed.fill_(s)
        graph.replay()
        eager_step()
    torch.cuda.synchronize()
    for (name, a), (_, b) in zip([*model.named_parameters(), *model.named_buffers()],
                                 [*eager.named_parameters(), *eager.named_buffers()]):
        close(a.detach().cpu(), b.detach().cpu(), torch.float32, name)
