"""The fused 2-Way loss op against reference.loss: every term and every input's gradient, in each
loss variant, also when terms other than the total are differentiated."""
import math

import pytest
import torch

from twoway_fast import reference
from twoway_fast.backends import fused
from twoway_fast.loss_terms import LossTerms
from twoway_fast.loss_variants import CORRELATION, MIDWAY_LOG, MIDWAY_LOG_EPS

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from fused_pairs import close  # noqa: E402

VARIANTS = [("second_moment", "after_dropout"), ("second_moment", "before_dropout"),
            ("correlation", "after_dropout"), ("correlation", "before_dropout")]
COEFFICIENTS = dict(lx=1.0, ly=0.7, lh=2.0, lc=0.5, wd=0.05, lg=0.05, lxy=0.8, lu=1.3)


def options(midway_log: bool, correlation: bool) -> int:
    """The ops' loss_options of these variants."""
    return (MIDWAY_LOG if midway_log else 0) | (CORRELATION if correlation else 0)


def loss_inputs(batch, dx, dy, k, dtype, blocks=False):
    torch.manual_seed(4)
    x, y = torch.randn(batch, dx, dtype=dtype), torch.randn(batch, dy, dtype=dtype)
    out = reference.TwoWayOutput(*(torch.randn(batch, w, dtype=dtype) for w in (dx, dy, k, k, k, k)))
    out = reference.TwoWayOutput(*(t.requires_grad_() for t in out))
    weights = [torch.randn(k, dx, dtype=dtype), torch.randn(dy, k, dtype=dtype)]
    if blocks:
        weights.append(torch.randn(2, k // 2, k // 2, dtype=dtype))
    gammas = [torch.empty(k, dtype=dtype).uniform_(0.5, 1.5) for _ in range(2)]
    for t in (*weights, *gammas):
        t.requires_grad_()
    return out, x, y, weights, gammas


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("midway", ["sum", "log"])
@pytest.mark.parametrize("form, where", VARIANTS)
@pytest.mark.parametrize("batch, dx, dy, k", [(2, 7, 1, 4), (3, 1, 7, 50), (129, 392, 1000, 50), (127, 50, 7, 392),
                                              (3, 4, 6, 5), (257, 33, 9, 50)])
def test_matches_reference(batch, dx, dy, k, form, where, midway, dtype, threads):
    out, x, y, weights, gammas = loss_inputs(batch, dx, dy, k, dtype, blocks=k % 2 == 0)
    kwargs = dict(**COEFFICIENTS, midway_form=midway, decorrelation_form=form, decorrelation_input=where,
                  decorrelation_eps=1e-5)
    check_against_reference(out, x, y, weights, gammas, dtype, kwargs)


def check_against_reference(out, x, y, weights, gammas, dtype, kwargs):
    got = fused.loss(out, x, y, weights, gammas, **kwargs)
    want = reference.loss(out, x, y, weights, gammas, **kwargs)
    for name, a, b in zip(reference.LossTerms._fields, got, want):
        close(a, b, dtype, name)
    # The total and each term enter with their own weights, so every term's backward is checked.
    term_weights = torch.randn(len(got), dtype=dtype)
    inputs = (*out, *weights, *gammas)
    got_grads = torch.autograd.grad(torch.stack(list(got)) @ term_weights, inputs, allow_unused=True)
    want_grads = torch.autograd.grad(torch.stack(list(want)) @ term_weights, inputs, allow_unused=True)
    names = [*reference.TwoWayOutput._fields, *(f"weights[{i}]" for i in range(len(weights))),
             *(f"gammas[{i}]" for i in range(len(gammas)))]
    for name, a, b in zip(names, got_grads, want_grads):
        if b is None:  # an input this variant does not use gets a zero gradient from the op
            assert a is None or torch.count_nonzero(a) == 0, name
        else:
            close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["second_moment", "correlation"])
def test_log_midway_where_dimensions_match(form, dtype, threads):
    """Dimensions whose representations match exactly (d_i = 0) or nearly: the log form's eps keeps the
    term finite and its gradient bounded, in the op as in the reference."""
    out, x, y, weights, gammas = loss_inputs(9, 5, 4, 6, dtype)
    with torch.no_grad():
        out.hy[:, :2] = out.hx[:, :2]
        out.hy[:, 2] = out.hx[:, 2] + 1e-4
    kwargs = dict(**COEFFICIENTS, midway_form="log", decorrelation_form=form, decorrelation_eps=1e-5)
    check_against_reference(out, x, y, weights, gammas, dtype, kwargs)


def test_log_midway_of_equal_representations_is_k_log_eps():
    """hx == hy: every d_i is 0, so the term is k log(eps) with the op's eps (kMidwayLogEps) the same as
    the Python one (MIDWAY_LOG_EPS), and its gradient 0."""
    out, x, y, weights, gammas = loss_inputs(4, 3, 5, 7, torch.float64)
    out = out._replace(hy=out.hx.detach().clone().requires_grad_())
    terms = fused.loss(out, x, y, weights, gammas, **COEFFICIENTS, midway_form="log")
    assert terms.midway.item() == pytest.approx(7 * math.log(MIDWAY_LOG_EPS), rel=1e-14)
    grads = torch.autograd.grad(terms.midway, (out.hx, out.hy))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniformity_of_constant_and_repeated_rows(dtype, threads):
    """A constant code row (centred, it is 0: no direction) and rows repeated exactly (distance 0): the
    uniformity term and its gradient finite and the reference's, also at a batch of one row (no pair: 0)."""
    out, x, y, weights, gammas = loss_inputs(6, 3, 4, 5, dtype)
    with torch.no_grad():
        out.hx[0] = 0.7
        out.hx[1] = out.hx[2]
        out.hy[3] = out.hy[4]
    kwargs = dict(**COEFFICIENTS, decorrelation_form="correlation", decorrelation_eps=1e-5)
    check_against_reference(out, x, y, weights, gammas, dtype, kwargs)
    one = reference.TwoWayOutput(*(t[:1].detach().requires_grad_() for t in out))
    terms = fused.loss(one, x[:1], y[:1], weights, gammas, **kwargs)
    assert terms.uniform_x.item() == 0 and terms.uniform_y.item() == 0
    assert torch.count_nonzero(torch.autograd.grad(terms.uniform_x, one.hx)[0]) == 0


@pytest.mark.parametrize("midway", ["sum", "log"])
@pytest.mark.parametrize("form", ["second_moment", "correlation"])
def test_gradcheck_float64(form, midway):
    out, x, y, weights, gammas = loss_inputs(5, 3, 4, 6, torch.float64, blocks=True)
    x.requires_grad_()

    def terms(x, *tensors):
        o = reference.TwoWayOutput(*tensors[:6])
        return torch.stack(list(fused.loss(o, x, y, tensors[6:9], tensors[9:], **COEFFICIENTS, midway_form=midway,
                                           decorrelation_form=form, decorrelation_input="before_dropout")))

    torch.autograd.gradcheck(terms, (x, *out, *weights, *gammas))


@pytest.mark.parametrize("midway_log", [False, True])
@pytest.mark.parametrize("correlation", [False, True])
def test_opcheck(correlation, midway_log):
    out, x, y, weights, gammas = loss_inputs(4, 3, 5, 6, torch.float32)
    coefficients = list(COEFFICIENTS.values())
    args = (x, y, *out, weights, gammas, coefficients, options(midway_log, correlation), 1e-5)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss.default, args)
    detached = [t.detach() for t in out]
    _, cx, cy = ops.twoway_loss(x, y, *detached, [w.detach() for w in weights], [g.detach() for g in gammas],
                                coefficients, options(midway_log, correlation), 1e-5)
    torch.library.opcheck(torch.ops.twoway_fast.twoway_loss_backward.default,
                          (torch.randn(len(LossTerms._fields)), x, y, *detached, [w.detach() for w in weights],
                           [g.detach() for g in gammas], cx, cy, coefficients, options(midway_log, correlation),
                           1e-5))


def test_rejects_bad_input():
    out, x, y, weights, gammas = loss_inputs(4, 3, 5, 6, torch.float32)
    coefficients = list(COEFFICIENTS.values())
    with pytest.raises(RuntimeError, match=r"x_hat must have the shape of x \[4, 3\]"):
        ops.twoway_loss(x, y, out.y_hat, *out[1:], weights, gammas, coefficients, 0, 1e-5)
    with pytest.raises(RuntimeError, match="coefficients must be"):
        ops.twoway_loss(x, y, *out, weights, gammas, coefficients[:5], 0, 1e-5)
    with pytest.raises(RuntimeError, match=r"gammas\[1\] must be a 1-D Float"):
        ops.twoway_loss(x, y, *out, weights, [gammas[0], gammas[1].double()], coefficients, 0, 1e-5)
    with pytest.raises(ValueError, match="decorrelation form"):
        fused.loss(out, x, y, weights, gammas, decorrelation_form="covariance")
    with pytest.raises(ValueError, match=r"midway must be one of \('sum', 'log'\) \(the mid-way term's form\), got 'mean'"):
        fused.loss(out, x, y, weights, gammas, midway_form="mean")
    with pytest.raises(ValueError, match="the mid-way term's form"):
        reference.loss(out, x, y, weights, gammas, midway_form="mean")
