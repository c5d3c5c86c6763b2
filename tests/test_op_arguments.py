"""Every op refuses, with a named error, arguments on different devices (the meta device included:
such a call reaches the op's fake kernel, which must not hand back uninitialised memory as a result)
and zero widths (which reached a division by the column count: SIGFPE), in its C++ kernel and in its
fake kernel alike."""
import pytest
import torch

from twoway_fast.loss_terms import COEFFICIENTS, LossTerms

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

OPS = torch.ops.twoway_fast
ROWS = 4


def _t(*shape):
    return torch.rand(*shape, dtype=torch.float64) + 0.5  # positive: valid as std too


def net_args(dx=3, dy=5, h=2):
    """One hidden position: weights (h, dx), (dy, h); bias X's (h, dy) then Y's (h, dx)."""
    return dict(x=_t(ROWS, dx), y=_t(ROWS, dy), weights=[_t(h, dx), _t(dy, h)],
                bias=[_t(h), _t(dy), _t(h), _t(dx)], gamma=[_t(h), _t(h)], beta=[_t(h), _t(h)],
                rng_states=torch.zeros(1, 3, dtype=torch.int64))


NET_TAIL = dict(p=[0.0], repr_layer=0, leak=[0.3], eps=1e-3, act_first=True)
LOSS_TAIL = dict(coefficients=list(COEFFICIENTS.values()), loss_options=1, eps=1e-5)


def loss_args(dx=3, dy=5, h=2):
    n = net_args(dx, dy, h)
    return dict(x=n["x"], y=n["y"], x_hat=_t(ROWS, dx), y_hat=_t(ROWS, dy), hx=_t(ROWS, h), hy=_t(ROWS, h),
                hx_dec=_t(ROWS, h), hy_dec=_t(ROWS, h), weights=n["weights"], gammas=n["gamma"])


def block_args(w):
    return dict(z=_t(ROWS, w), gamma=_t(w), beta=_t(w))


RNG = dict(rng_state=torch.zeros(3, dtype=torch.int64))
BLOCK_TAIL = dict(p=0.0, leak=0.3)


def calls(w=2, dx=3, dy=5):
    """(op, tensor arguments, other arguments) for every op; w: the hidden width."""
    n, loss = net_args(dx, dy, w), loss_args(dx, dy, w)
    stats = dict(mean=_t(w), std=_t(w))
    step = {k: v for k, v in n.items()}
    params = [*n["weights"], *n["bias"], *n["gamma"], *n["beta"]]
    step_tail = dict(**NET_TAIL, coefficients=LOSS_TAIL["coefficients"], loss_options=1, decorrelation_eps=1e-5,
                     products=None)
    saved = dict(z=[_t(ROWS, w), _t(ROWS, w)], mean=[_t(w), _t(w)], std=[_t(w), _t(w)])
    grads = dict(grad_x_hat=_t(ROWS, dx), grad_y_hat=_t(ROWS, dy), grad_hx=_t(ROWS, w), grad_hy=_t(ROWS, w),
                 grad_hx_pre=None, grad_hy_pre=None)
    return [
        ("hidden_block", {**block_args(w), **RNG}, dict(**BLOCK_TAIL, eps=1e-3, act_first=True)),
        ("hidden_block_backward", {"grad_out": _t(ROWS, w), **block_args(w), **stats, **RNG},
         dict(**BLOCK_TAIL, act_first=True)),
        ("hidden_block_with_stats", {**block_args(w), **stats, **RNG}, dict(**BLOCK_TAIL, act_first=True)),
        ("hidden_block_with_stats_backward", {"grad_out": _t(ROWS, w), **block_args(w), **stats, **RNG},
         dict(**BLOCK_TAIL, act_first=True)),
        ("twoway_net", n, NET_TAIL),
        ("twoway_net_backward", {**grads, "x": n["x"], "y": n["y"], "weights": n["weights"], "gamma": n["gamma"],
                                 "beta": n["beta"], "rng_states": n["rng_states"], **saved},
         dict(p=[0.0], repr_layer=0, leak=[0.3], act_first=True, input_grads=True)),
        ("twoway_loss", loss, LOSS_TAIL),
        ("twoway_loss_backward", {"grad_terms": _t(len(LossTerms._fields)), **loss, "cx": _t(w, w), "cy": _t(w, w)},
         LOSS_TAIL),
        ("twoway_step_gradients", step, step_tail),
        ("twoway_sgd_step", {**step, "momentum_buffers": []},
         dict(**step_tail, update=[False] * len(params), lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
              weight_decay=0.0, maximize=False)),
        # The step counts travel with the settings: torch.optim keeps them on the CPU for any device.
        ("twoway_adam_step", {**step, "exp_avgs": [_t(*q.shape) for q in params],
                              "exp_avg_sqs": [_t(*q.shape) for q in params], "max_exp_avg_sqs": []},
         dict(**step_tail, update=[True] * len(params), state_steps=[torch.tensor(1.0) for _ in params], lr=0.1,
              beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              maximize=False)),
        ("retrieval_ranks", dict(a=_t(3, w), b=_t(3, w), group=torch.arange(3)), dict(tile_rows=2)),
    ]


def run(op, tensors, others):
    with torch.no_grad():  # the update ops update in place
        return getattr(OPS, op).default(**tensors, **others)


def _meta_variants(tensors):
    """Each tensor argument (a list's first item for a list) moved to the meta device, the rest left."""
    for name, value in tensors.items():
        if isinstance(value, list):
            if value:
                yield name, {**tensors, name: [value[0].to("meta"), *value[1:]]}
        elif value is not None:
            yield name, {**tensors, name: value.to("meta")}


def _op_ids():
    return [op for op, _, _ in calls()]


@pytest.mark.parametrize("index", range(len(calls())), ids=_op_ids())
def test_valid_arguments_run(index):
    op, tensors, others = calls()[index]
    run(op, tensors, others)  # the builders are right: what the tests below change is what is refused


@pytest.mark.parametrize("index", range(len(calls())), ids=_op_ids())
def test_one_argument_on_meta_is_refused(index):
    op, tensors, others = calls()[index]
    for name, variant in _meta_variants(tensors):
        with pytest.raises(RuntimeError, match=r"is on (meta|cpu) but .* is on (cpu|meta)"):
            run(op, variant, others)


@pytest.mark.parametrize("index", range(len(calls())), ids=_op_ids())
def test_all_arguments_on_meta_give_meta_results(index):
    op, tensors, others = calls()[index]
    meta = {k: [t.to("meta") for t in v] if isinstance(v, list) else None if v is None else v.to("meta")
            for k, v in tensors.items()}
    out = run(op, meta, others)
    flat = [t for o in (out if isinstance(out, (tuple, list)) else [out])
            for t in (o if isinstance(o, (tuple, list)) else [o])]
    assert flat and all(t.is_meta for t in flat)  # shapes only: no memory posing as a result


ZERO_WIDTHS = [dict(w=0), dict(dx=0), dict(dy=0)]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("index", range(len(calls())), ids=_op_ids())
def test_zero_widths_are_refused(index, device):
    for widths in ZERO_WIDTHS:
        op, tensors, others = calls(**widths)[index]
        if op.startswith("hidden_block") or op == "retrieval_ranks":
            if "w" not in widths:
                continue  # these take one width
        moved = {k: [t.to(device) for t in v] if isinstance(v, list) else None if v is None else v.to(device)
                 for k, v in tensors.items()}
        with pytest.raises(RuntimeError, match=r"at least one column"):
            run(op, moved, others)
