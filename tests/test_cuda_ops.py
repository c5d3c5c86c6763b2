"""The CUDA network and loss ops against the CPU ops and the reference, with identical dropout masks
(same seed, so the same rng_states): outputs and every gradient, float32 tight; opcheck on CUDA; a
training step captured in a CUDA graph against the same step run eagerly. Skipped without a GPU
(scripts/gpu_check.sh runs them on one)."""
import copy

import pytest
import torch

import twoway_fast
from twoway_fast import reference

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from twoway_fast import fused  # noqa: E402

from fused_pairs import close, twin_models  # noqa: E402
from test_loss_op import COEFFICIENTS, VARIANTS, loss_inputs  # noqa: E402
from test_tied_network import CASES, DTYPES, ORDERS, op_args, run  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
def test_network_matches_cpu_op_and_reference(batch, dx, hidden, dy, blocks, dropout, order, dtype):
    torch.manual_seed(1)
    ref, fused = twin_models(dx, dy, hidden, dtype, order=order, locally_dense=blocks, dropout=dropout)
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form, where", VARIANTS)
@pytest.mark.parametrize("batch, dx, dy, k", [(2, 7, 1, 4), (129, 392, 1000, 50), (127, 50, 7, 392)])
def test_loss_matches_cpu_op_and_reference(batch, dx, dy, k, form, where, dtype):
    out, x, y, weights, gammas = loss_inputs(batch, dx, dy, k, dtype, blocks=k % 2 == 0)
    kwargs = dict(**COEFFICIENTS, decorrelation_form=form, decorrelation_input=where, decorrelation_eps=1e-5)
    term_weights = torch.randn(len(reference.LossTerms._fields), dtype=dtype)

    def terms_and_grads(loss, out, x, y, weights, gammas):
        terms = torch.stack(list(loss(reference.TwoWayOutput(*out), x, y, weights, gammas, **kwargs)))
        inputs = (*out, *weights, *gammas)
        grads = torch.autograd.grad(terms @ term_weights.to(terms.device), inputs, allow_unused=True)
        return [terms.detach().cpu(), *(None if g is None else g.cpu() for g in grads)]

    got = terms_and_grads(fused.loss, *to_cuda((tuple(out), x, y, weights, gammas)))
    for what, loss in (("CPU op", fused.loss), ("reference", reference.loss)):
        want = terms_and_grads(loss, tuple(out), x, y, weights, gammas)
        for i, (a, b) in enumerate(zip(got, want)):
            if b is None:  # an input this variant does not use: the op's gradient is zero
                assert a is None or torch.count_nonzero(a) == 0, f"gradient {i} vs the {what}"
            else:
                close(a, b, dtype, f"{'terms' if i == 0 else f'gradient {i}'} vs the {what}")


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


@pytest.mark.parametrize("correlation", [False, True])
def test_loss_opcheck(correlation):
    out, x, y, weights, gammas = to_cuda(loss_inputs(4, 3, 5, 6, torch.float32))
    coefficients = list(COEFFICIENTS.values())
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss.default,
                          (x, y, *out, weights, gammas, coefficients, correlation, 1e-5))
    detached = [t.detach() for t in out]
    weights, gammas = [w.detach() for w in weights], [g.detach() for g in gammas]
    _, cx, cy = ops.twoway_loss(x, y, *detached, weights, gammas, coefficients, correlation, 1e-5)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss_backward.default,
                          (torch.randn(8, device="cuda"), x, y, *detached, weights, gammas, cx, cy, coefficients,
                           correlation, 1e-5))


def test_rejects_half_precision_for_now():
    x, y, weights, bias, gamma, beta, *rest = to_cuda(op_args(torch.float32))
    half = lambda ts: [t.half() for t in ts]  # noqa: E731
    with pytest.raises(RuntimeError, match="CUDA twoway_net takes float32 or float64"):
        ops.twoway_net(x.half(), y.half(), half(weights), half(bias), half(gamma), half(beta), *rest, True)


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
