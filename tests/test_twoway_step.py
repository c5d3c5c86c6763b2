"""The direct training step (twoway_fast.step.direct: the ops and their backward ops without autograd)
against the autograd step of the fused backend: same parameters, optimiser state and BN running
statistics after several steps, and the same Trainer run."""
import copy
import warnings

import pytest
import torch

from twoway_fast import TwoWayNet, data, presets
from twoway_fast import train as train_mod
from twoway_fast.loss import TwoWayLoss
from twoway_fast.loss_terms import LossTerms
from twoway_fast.train import Trainer, TrainConfig, build

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from fused_pairs import close  # noqa: E402
from twoway_fast.step.direct import DirectStep, direct_step_applies  # noqa: E402

STEPS, FIRST_ROW = 4, 5


def optimizer(name, model):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=0.01)


def make(dtype, order, dropout, decorrelation, decorrelation_input, opt_name, repr_affine=True, midway="sum",
         repr_linear=False):
    torch.manual_seed(3)
    model = TwoWayNet(10, 12, [8, 6, 8], order=order, dropout=dropout, locally_dense={-1: 2},
                      repr_affine=repr_affine, repr_linear=repr_linear, backend="fused").to(dtype)
    with torch.no_grad():  # biases and betas not 0, so that every gradient path counts
        for p in [*model.x_bias, *model.y_bias, *(bn.beta for bn in [*model.bn_x, *model.bn_y])]:
            if isinstance(p, torch.nn.Parameter):  # not the fixed ones (repr_affine=False)
                p.normal_(0, 0.1)
    criterion = TwoWayLoss(model, lh=0.7, lc=0.3, wd=0.02, lg=0.04, lxy=0.4, lu=0.6, decorrelation=decorrelation,
                           decorrelation_input=decorrelation_input, midway=midway)
    return model, criterion, optimizer(opt_name, model)


def autograd_step(model, criterion, opt, x, y, seed):
    terms = criterion(model(x, y, seed=seed, first_row=FIRST_ROW), x, y)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    opt.step()
    return terms


def assert_same(actual, expected, dtype, what, update_rounding=False):
    # Both steps run the same kernels on the same inputs, and the gradient sums they differ in have two
    # terms (a + b == b + a): measured bit-identical over 20 steps of every case. The tolerances allow
    # the rounding of a reordered sum, nothing more. With SGD the direct step updates the parameters in
    # its own op, whose products round apart where torch's kernels fuse them (FMA): a last-bit difference
    # a step, which these steps (lr 0.05, 16 rows) grow to at most 6.4e-5 (float32) and 1.4e-13 (float64)
    # relative after 4 steps (measured over every case); update_rounding allows 3x that.
    if update_rounding:
        tol = dict(rtol=5e-13, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    else:
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def compare_steps(args, **kwargs):
    """STEPS direct steps against the autograd steps of a twin, both made by make(*args, **kwargs); the
    optimiser's update is the op's from the second step. Returns the direct step's model."""
    dtype = args[0]
    model, criterion, opt = make(*args, **kwargs)
    twin, twin_criterion, twin_opt = make(*args, **kwargs)
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x, y = torch.randn(16, 10, generator=gen, dtype=dtype), torch.randn(16, 12, generator=gen, dtype=dtype)
        expected = autograd_step(model, criterion, opt, x, y, 100 + step)
        got = direct(x, y, torch.tensor(100 + step))
        # The first step is the optimiser's own (it makes its state), then the op's.
        assert direct.fused_update() is not None
        for name, a, e in zip(expected._fields, got, expected):
            assert_same(a, e.detach(), dtype, f"step {step} term {name}", update_rounding=True)
    assert_same_state(twin, twin_opt, model, opt, dtype, update_rounding=True)
    return twin


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
@pytest.mark.parametrize("decorrelation", ["second_moment", "correlation"])
@pytest.mark.parametrize("decorrelation_input", ["after_dropout", "before_dropout"])
@pytest.mark.parametrize("dropout", [0.0, [0.5, 0.0, 0.3]])
def test_direct_steps_equal_autograd_steps(dtype, opt_name, order, decorrelation, decorrelation_input, dropout):
    compare_steps((dtype, order, dropout, decorrelation, decorrelation_input, opt_name))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_direct_step_with_a_fixed_repr_scale_equals_autograd_step(dtype, opt_name, order):
    """repr_affine=False: the fixed gamma and beta reach the ops as constants and take no update (the op's
    update flags leave them out: the optimiser does not hold them)."""
    args = (dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", opt_name)
    twin = compare_steps(args, repr_affine=False)
    for bn in (twin.bn_x[1], twin.bn_y[1]):
        assert torch.equal(bn.gamma, torch.ones(6, dtype=dtype)) and torch.equal(bn.beta, torch.zeros(6, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("repr_affine", [True, False])
@pytest.mark.parametrize("decorrelation", ["second_moment", "correlation"])
def test_direct_steps_with_log_midway_equal_autograd_steps(dtype, opt_name, repr_affine, decorrelation):
    """The log mid-way term in the update ops against the autograd step on the loss op (the gradients op:
    test_step_gradients_with_log_midway_equal_the_reference_step)."""
    args = (dtype, "act_then_bn", [0.5, 0.0, 0.3], decorrelation, "before_dropout", opt_name)
    compare_steps(args, repr_affine=repr_affine, midway="log")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_direct_steps_with_a_linear_representation_equal_autograd_steps(dtype, opt_name, order):
    """repr_linear in the update ops against the autograd step."""
    args = (dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", opt_name)
    compare_steps(args, repr_linear=True, midway="log")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("repr_affine", [True, False])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
@pytest.mark.parametrize("repr_linear", [False, True])
def test_step_gradients_with_log_midway_equal_the_reference_step(dtype, repr_affine, order, repr_linear):
    """twoway_step_gradients (DirectStep's first step with Adam, before the optimiser has state) against
    autograd through the plain-PyTorch reference: the terms and every gradient of one step, the log mid-way
    term with a learned or a fixed scale at the representation, a rectified or a linear one."""
    model, criterion, opt = make(dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", "adam",
                                 repr_affine=repr_affine, midway="log", repr_linear=repr_linear)
    ref = copy.deepcopy(model)
    ref.backend = "reference"
    x, y = torch.randn(16, 10, dtype=dtype), torch.randn(16, 12, dtype=dtype)
    want = TwoWayLoss(ref, lh=0.7, lc=0.3, wd=0.02, lg=0.04, lxy=0.4, lu=0.6, decorrelation="correlation",
                      decorrelation_input="before_dropout", midway="log")(ref(x, y, seed=9, first_row=FIRST_ROW), x, y)
    want.total.backward()
    got = DirectStep(model, criterion, opt, first_row=FIRST_ROW)(x, y, 9)
    for name, a, e in zip(want._fields, got, want):
        close(a, e.detach(), dtype, f"term {name}")
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        close(p.grad, r.grad, dtype, f"grad {name}")


def assert_same_state(twin, twin_opt, model, opt, dtype, update_rounding=False):
    for name, e in model.state_dict().items():  # parameters and BN running statistics
        assert_same(twin.state_dict()[name], e, dtype, name, update_rounding)
    names = dict(zip(map(id, model.parameters()), (n for n, _ in model.named_parameters())))
    twins = dict(zip(names.values(), twin.parameters()))
    for p in model.parameters():
        name = names[id(p)]
        if p.grad is None:
            assert twins[name].grad is None, name
        else:
            assert_same(twins[name].grad, p.grad, dtype, f"grad {name}", update_rounding)
        for key, value in opt.state[p].items():
            assert_same(twin_opt.state[twins[name]][key], value, dtype, f"optimiser state {key} of {name}",
                        update_rounding)


SGD_VARIANTS = [dict(momentum=0.9, nesterov=True), dict(momentum=0.0), dict(momentum=0.8, dampening=0.3),
                dict(momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
                dict(momentum=0.5, weight_decay=0.02)]
ADAM_VARIANTS = [dict(), dict(betas=(0.5, 0.9), eps=1e-3), dict(betas=(0.3, 0.99)), dict(weight_decay=0.01),
                 dict(amsgrad=True, weight_decay=0.02), dict(maximize=True), dict(foreach=True)]
VARIANTS = ([(torch.optim.SGD, v) for v in SGD_VARIANTS] + [(torch.optim.Adam, v) for v in ADAM_VARIANTS]
            + [(torch.optim.AdamW, v) for v in ADAM_VARIANTS[2:5]])


def variant_id(v):
    return v.__name__ if isinstance(v, type) else ",".join(f"{k}={v}" for k, v in v.items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("optimizer, variant", VARIANTS, ids=variant_id)
def test_update_ops_take_torch_optimisers_update(optimizer, variant, dtype):
    # Every setting the ops read (SGD's; Adam's and AdamW's: betas, one at 0.5 or more where torch's lerp
    # takes its other form, eps, weight decay, amsgrad, maximize), and an lr changed between steps (as a
    # scheduler does), against the optimiser after the autograd step: the update's last-bit roundings only.
    model, criterion, _ = make(dtype, "bn_then_act", [0.5, 0.0, 0.3], "second_moment", "after_dropout", "sgd")
    twin, twin_criterion, _ = make(dtype, "bn_then_act", [0.5, 0.0, 0.3], "second_moment", "after_dropout", "sgd")
    opt, twin_opt = (optimizer(m.parameters(), lr=0.05, **variant) for m in (model, twin))
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        for o in (opt, twin_opt):
            o.param_groups[0]["lr"] = 0.05 / (step + 1)
        x, y = torch.randn(16, 10, generator=gen, dtype=dtype), torch.randn(16, 12, generator=gen, dtype=dtype)
        autograd_step(model, criterion, opt, x, y, step)
        direct(x, y, step)
        assert direct.fused_update() is not None  # the optimiser's first step made its state
    assert_same_state(twin, twin_opt, model, opt, dtype, update_rounding=True)


def frozen_bias(model, opt):
    model.x_bias[0].requires_grad_(False)


def bias_left_out(model, opt):
    opt.param_groups[0]["params"] = [p for p in model.parameters() if p is not model.x_bias[0]]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("change", [frozen_bias, bias_left_out])
def test_update_ops_leave_what_the_optimiser_does_not_update(change, opt_name):
    # A frozen bias (no gradient: the optimiser skips it) or one outside the optimiser's group: the ops'
    # update flags leave it as it is, and update the rest as the optimiser would.
    def fresh_gradient(model):
        model.x_bias[0].grad = None  # each step's gradient, as the direct step gives it

    twin, left = changed_twins_step(change, opt_name, fused=True, before_step=fresh_gradient)
    assert torch.equal(twin.x_bias[0], left)


def changed_twins_step(change, opt_name, fused, before_step=lambda model: None):
    """Three direct steps against the autograd steps of a twin, `change` made to both models and
    optimisers; fused: whether the update op stands for the optimiser after each step. Returns the direct
    step's model and its x_bias[0] as it was before the steps."""
    model, criterion, opt = make(torch.float64, "act_then_bn", 0.5, "second_moment", "after_dropout", opt_name)
    twin, twin_criterion, twin_opt = make(torch.float64, "act_then_bn", 0.5, "second_moment", "after_dropout",
                                          opt_name)
    change(model, opt)
    change(twin, twin_opt)
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    first = twin.x_bias[0].detach().clone()
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        x, y = torch.randn(16, 10, generator=gen, dtype=torch.float64), torch.randn(16, 12, generator=gen,
                                                                                   dtype=torch.float64)
        before_step(model)
        autograd_step(model, criterion, opt, x, y, step)
        direct(x, y, step)
        assert (direct.fused_update() is not None) == fused
    assert_same_state(twin, twin_opt, model, opt, torch.float64, update_rounding=fused)
    return twin, first


def two_groups(model, opt):
    params = list(model.parameters())
    opt.param_groups.clear()
    opt.add_param_group(dict(params=params[:3]))
    opt.add_param_group(dict(params=params[3:], lr=0.01))


def step_hook(model, opt):
    opt.register_step_pre_hook(lambda *_: None)


def non_contiguous_weight(model, opt):
    with torch.no_grad():
        w = model.weights[1]
        w.data = w.data.T.contiguous().T  # same values, column-major


def foreign_parameter(model, opt):
    opt.param_groups[0]["params"].append(torch.nn.Parameter(torch.ones(3, dtype=torch.float64)))


def optimiser_subclass(model, opt):
    opt.__class__ = type("Mine", (type(opt),), {})


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("change", [two_groups, step_hook, non_contiguous_weight, foreign_parameter,
                                    optimiser_subclass])
def test_what_the_ops_cannot_stand_for_takes_the_optimiser(change, opt_name):
    # Two parameter groups, a step hook, a non-contiguous weight, a parameter the model does not hand the
    # op, an optimiser subclass (it may change the update): the optimiser's own update, as the autograd step
    # (the op would take one lr for both groups, skip the hook, refuse the weight it cannot update in
    # place, leave the foreign parameter, or update as its base class does).
    changed_twins_step(change, opt_name, fused=False)


STEP_ARGS = 16  # the arguments every step op takes first; then the update flags and the optimiser's


def step_args(dtype=torch.float32, midway="sum", optimizer="sgd", update=None):
    """Arguments of the step ops on a small model: twoway_step_gradients takes the first STEP_ARGS;
    twoway_sgd_step (momentum, Nesterov, weight decay) or twoway_adam_step (amsgrad, weight decay; every
    step count at 3) all; update: the flags (default: every parameter)."""
    model, criterion, _ = make(dtype, "act_then_bn", [0.5, 0.0, 0.3], "correlation", "before_dropout", "sgd",
                               midway=midway)
    step = DirectStep(model, criterion, torch.optim.SGD(model.parameters(), lr=0.1))
    params = [[p.detach().clone() for p in ps] for ps in (step.weights, step.bias, step.gamma, step.beta)]
    update = [True] * sum(map(len, params)) if update is None else update
    updated = [p for p, u in zip((p for ps in params for p in ps), update) if u]
    x, y = torch.randn(16, 10, dtype=dtype), torch.randn(16, 12, dtype=dtype)
    args = [x, y, *params, step.states, model.dropout, model.repr_layer, model.leaks, model.bn_eps, model.act_first,
            step.coefficients, step.loss_options, step.eps, None, update]
    if optimizer == "sgd":
        return args + [[torch.randn_like(p) for p in updated], 0.1, 0.9, 0.1, True, 0.01, False]
    state = [[f(p) for p in updated] for f in (torch.randn_like, lambda p: torch.rand_like(p), torch.rand_like)]
    steps = [torch.tensor(3.0) for _ in updated]
    return args + [*state, steps, 0.1, 0.9, 0.999, 1e-8, 0.01, False, True, False]


UPDATE_OPS = {"sgd": "twoway_sgd_step", "adam": "twoway_adam_step"}


@pytest.mark.parametrize("midway", ["sum", "log"])
def test_step_gradients_opcheck(midway):
    args = step_args(midway=midway)[:STEP_ARGS]
    torch.library.opcheck(torch.ops.twoway_fast.twoway_step_gradients.default, args)


def test_step_gradients_of_a_non_contiguous_weight():
    # The gradients op reads the weights for the weight decay too: a transposed view must count as the
    # same values, not its storage order.
    args = step_args(torch.float64)[:STEP_ARGS]
    weights = [w.clone() for w in args[2]]
    expected = torch.ops.twoway_fast.twoway_step_gradients.default(*args)
    args[2] = [w.T.contiguous().T if w.dim() == 2 else w for w in weights]
    assert not args[2][0].is_contiguous()
    got = torch.ops.twoway_fast.twoway_step_gradients.default(*args)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("midway", ["sum", "log"])
def test_update_step_opcheck(optimizer, midway):
    # Not test_aot_dispatch_*: functionalisation does not take a custom op mutating tensor lists, and the
    # op is DirectStep's, which runs eagerly (the compiled step is the autograd one).
    op = getattr(torch.ops.twoway_fast, UPDATE_OPS[optimizer]).default
    with torch.no_grad():  # the op updates in place, outside autograd (it says so otherwise)
        torch.library.opcheck(op, step_args(midway=midway, optimizer=optimizer),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_ops_update_the_flagged_parameters_only(optimizer):
    # Every other parameter flagged: those change, the rest keep their values; the state lists hold the
    # flagged ones' state only, and Adam counts their steps.
    n = len(step_args()[STEP_ARGS])
    update = [i % 2 == 0 for i in range(n)]
    args = step_args(torch.float64, optimizer=optimizer, update=update)
    before = [p.clone() for ps in args[2:6] for p in ps]
    with torch.no_grad():
        getattr(torch.ops.twoway_fast, UPDATE_OPS[optimizer]).default(*args)
    after = [p for ps in args[2:6] for p in ps]
    for i, (b, a) in enumerate(zip(before, after)):
        assert torch.equal(a, b) != update[i], f"parameter {i}"
    if optimizer == "adam":
        assert [s.item() for s in args[STEP_ARGS + 4]] == [4.0] * sum(update)  # state_steps


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_ops_reject_grad_mode_bad_state_and_parameters(optimizer):
    op = getattr(torch.ops.twoway_fast, UPDATE_OPS[optimizer]).default
    with pytest.raises(RuntimeError, match=r"updates parameters in place: call it under torch.no_grad\(\)"):
        op(*step_args(optimizer=optimizer))
    with torch.no_grad():
        check_bad_state_and_parameters(op, optimizer)


def check_bad_state_and_parameters(op, optimizer):
    first = STEP_ARGS + 1  # the first state list
    name = "momentum_buffers" if optimizer == "sgd" else "exp_avgs"
    args = step_args(optimizer=optimizer)
    args[first] = args[first][:-1]
    with pytest.raises(RuntimeError, match=rf"{name} must hold one tensor per updated parameter \(24\), got 23"):
        op(*args)
    args = step_args(optimizer=optimizer)
    args[first][3] = args[first][3].double()
    with pytest.raises(RuntimeError, match=rf"{name} 3 must be a contiguous tensor like its parameter"):
        op(*args)
    args = step_args(optimizer=optimizer)
    args[STEP_ARGS] = args[STEP_ARGS][:-1]
    with pytest.raises(RuntimeError, match=r"update must hold one flag per parameter \(24\), got 23"):
        op(*args)
    args = step_args(optimizer=optimizer)
    args[2][0] = args[2][0].T.contiguous().T  # same shape, not contiguous
    with pytest.raises(RuntimeError, match="parameter 0 must be contiguous to be updated in place"):
        op(*args)
    args = step_args(optimizer=optimizer, update=[False] + [True] * 23)
    args[2][0] = args[2][0].T.contiguous().T  # not updated: it may be read where it lies
    op(*args)
    args = step_args(optimizer=optimizer)
    if optimizer == "sgd":
        with pytest.raises(RuntimeError, match="momentum_buffers must be empty when momentum is 0"):
            op(*args[:first + 2], 0.0, *args[first + 3:])
        return
    args[first + 3][2] = torch.zeros(2)
    with pytest.raises(RuntimeError, match="each of state_steps must be a one-element floating-point CPU tensor"):
        op(*args)
    args = step_args(optimizer=optimizer)
    with pytest.raises(RuntimeError, match="max_exp_avg_sqs must be empty without amsgrad, got 24"):
        op(*args[:-2], False, args[-1])


def test_seed_as_int_or_tensor():
    # The step keeps its rng states and writes each seed into them: an int and a tensor are the same
    # seed, another seed another dropout mask. The second step of each run counts (a seed after another).
    runs = []
    for seed in (7, torch.tensor(7), 8):
        model, criterion, opt = make(torch.float64, "act_then_bn", 0.5, "second_moment", "after_dropout", "sgd")
        step = DirectStep(model, criterion, opt)
        x, y = torch.randn(16, 10, dtype=torch.float64), torch.randn(16, 12, dtype=torch.float64)
        step(x, y, 3)
        runs.append(torch.stack(list(step(x, y, seed))))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_direct_step_checks_its_input():
    model, criterion, opt = make(torch.float32, "act_then_bn", 0.5, "second_moment", "after_dropout", "sgd")
    step = DirectStep(model, criterion, opt)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 10\)"):
        step(torch.randn(16, 11), torch.randn(16, 12), 1)
    model.eval()
    with pytest.raises(ValueError, match="call model.train"):
        step(torch.randn(16, 10), torch.randn(16, 12), 1)


def test_applies_to_the_fused_backend_only():
    model, criterion, _ = make(torch.float32, "act_then_bn", 0.5, "second_moment", "after_dropout", "sgd")
    assert direct_step_applies(model, criterion, torch.device("cpu"))
    assert not direct_step_applies(model, criterion, torch.device("meta"))
    other = copy.deepcopy(model)
    assert not direct_step_applies(other, criterion, torch.device("cpu"))  # a loss bound to another model
    other.backend = "reference"
    assert not direct_step_applies(other, TwoWayLoss(other), torch.device("cpu"))


@pytest.mark.parametrize("optimizer", ["Adam", "SGD"])
def test_trainer_with_the_direct_step_equals_the_trainer_without(optimizer):
    # The op's update from the second step on, with the preset's lr schedule. A rectified code: with a
    # linear one the beta in front of it and its bias have an exact gradient of 0 (the code's batch norm
    # cancels any constant added before it), computed as rounding noise, which Adam scales up to full
    # steps, so two updates that round apart move them apart (the outputs stay the same).
    digits = data.load("digits", data.DataConfig(preprocess="none"))
    preset = presets.resolve("mnist", overrides=["model.hidden=[16,8,16]", "model.repr_linear=false",
                                                 "train.batch_size=128",
                                                 f"train.optimizer='{optimizer}'", "train.lr=0.001",
                                                 "train.epochs=2", "train.lr_milestones=[1]",
                                                 "train.precision='fp32'"])  # the eager step's products
    config = TrainConfig(**preset.train)
    runs = []
    for direct in (True, False):
        model, criterion = build(preset, digits.dx, digits.dy, config.seed)
        trainer = Trainer(model, criterion, digits.train, digits.val, config, None, progress=False)
        assert isinstance(trainer.step, DirectStep)  # the fused backend on the CPU: it applies
        if not direct:
            trainer.step = trainer._eager_step
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. the scheduler's "lr_scheduler.step() before optimizer.step()"
            runs.append((trainer, trainer.fit()))
    (direct, direct_log), (eager, eager_log) = runs
    assert direct.step.fused_update() is not None  # the op's update from the second step on
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(direct.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for d, e in zip(direct_log, eager_log):
        torch.testing.assert_close(d["train"], e["train"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d["val"]["total"], e["val"]["total"], rtol=1e-5, atol=1e-6)


def relative_error(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_bf16_products_stay_close_to_float32(order):
    # The gradients op with the network's products in bfloat16 (8 bits of mantissa: operands and results
    # rounded to 2^-9 relative) against the same op in float32 on a wider net: every term within 1%
    # (measured 0.08%), every weight's gradient within 8% in the relative norm of the difference (measured
    # 1.7-4.8%: the rounding grows where a gradient is a small difference of large sums, as through the
    # batch norms).
    torch.manual_seed(0)
    model = TwoWayNet(64, 48, [128, 32, 128], order=order, backend="fused")
    criterion = TwoWayLoss(model, lh=0.7, lc=0.3, wd=0.02, lg=0.04)
    step = DirectStep(model, criterion, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = torch.randn(256, 64), torch.randn(256, 48)
    args = [x, y, step.weights, step.bias, step.gamma, step.beta, step.states, model.dropout, model.repr_layer,
            model.leaks, model.bn_eps, model.act_first, step.coefficients, step.loss_options, step.eps]
    op = torch.ops.twoway_fast.twoway_step_gradients.default
    full, low = op(*args, None), op(*args, torch.bfloat16)
    for name, a, b in zip(LossTerms._fields, low[0], full[0]):
        assert abs(float(a - b)) <= 1e-2 * abs(float(b)) + 1e-4, name
    for k, (a, b) in enumerate(zip(low[1][:len(step.weights)], full[1])):
        assert a.dtype == torch.float32 and relative_error(a, b) < 8e-2, f"weight {k}: {relative_error(a, b)}"
    assert op(*args, torch.float32)[0].equal(full[0])  # the inputs' own dtype: the float32 step itself


def test_bf16_products_refuse_other_dtypes():
    args = step_args()[:STEP_ARGS]
    args[-1] = torch.float16
    with pytest.raises(RuntimeError, match=r"products must be None, x's dtype \(Float\) or torch.bfloat16"):
        torch.ops.twoway_fast.twoway_step_gradients.default(*args)


def test_bf16_step_opcheck():
    args = step_args()[:STEP_ARGS]
    args[-1] = torch.bfloat16
    torch.library.opcheck(torch.ops.twoway_fast.twoway_step_gradients.default, args)


def digits_trainer(*overrides: str) -> Trainer:
    """A Trainer of the mnist preset with `overrides` on the digits halves (raw pixels), no run folder."""
    digits = data.load("digits", data.DataConfig(preprocess="none"))
    preset = presets.resolve("mnist", overrides=list(overrides))
    config = TrainConfig(**preset.train)
    model, criterion = build(preset, digits.dx, digits.dy, config.seed)
    return Trainer(model, criterion, digits.train, digits.val, config, None, progress=False)


def test_trainer_in_bf16_trains_like_float32():
    # train.precision "bf16" on digits: the same run's losses within 2% of float32's, epoch by epoch.
    logs = {}
    for precision in ("fp32", "bf16"):
        trainer = digits_trainer("model.hidden=[64,16,64]", "train.batch_size=128", "train.epochs=3",
                                 f"train.precision='{precision}'")
        assert trainer.step.products == (torch.bfloat16 if precision == "bf16" else None)
        logs[precision] = trainer.fit()
        assert {row["precision"] for row in logs[precision]} == {precision}
    for low, full in zip(logs["bf16"], logs["fp32"]):
        torch.testing.assert_close(low["val"]["total"], full["val"]["total"], rtol=2e-2, atol=0)


def test_bf16_needs_the_fused_cpu_step():
    with pytest.raises(ValueError, match="train.precision 'bf16' runs in the fused backend's CPU training step only"):
        digits_trainer("model.hidden=[16,8,16]", "model.backend='reference'", "train.precision='bf16'")
    with pytest.raises(ValueError, match="train.precision must be one of"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_takes_bf16_where_the_cpu_multiplies_it_natively(monkeypatch, native):
    monkeypatch.setattr(train_mod, "native_bf16_products", lambda: native)
    trainer = digits_trainer("model.hidden=[16,8,16]", "train.epochs=1", "train.precision='auto'")
    assert trainer.precision == ("bf16" if native else "fp32")
    assert trainer.step.products == (torch.bfloat16 if native else None)
    assert trainer.fit()[0]["precision"] == trainer.precision


def test_auto_precision_is_float32_outside_the_fused_cpu_step(monkeypatch):
    # Where bf16 would be refused (here the reference backend), "auto" trains in float32 instead.
    monkeypatch.setattr(train_mod, "native_bf16_products", lambda: True)
    trainer = digits_trainer("model.hidden=[16,8,16]", "model.backend='reference'", "train.epochs=1",
                             "train.precision='auto'")
    assert trainer.precision == "fp32" and not isinstance(trainer.step, DirectStep)
