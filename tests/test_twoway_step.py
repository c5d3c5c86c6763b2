"""The direct training step (twoway_fast.step.direct: the ops and their backward ops without autograd)
against the autograd step of the fused backend: same parameters, optimiser state and BN running
statistics after several steps, and the same Trainer run."""
import copy
import warnings

import pytest
import torch

from twoway_fast import TwoWayNet, data, presets
from twoway_fast.loss import TwoWayLoss
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
    criterion = TwoWayLoss(model, lh=0.7, lc=0.3, wd=0.02, lg=0.04, decorrelation=decorrelation,
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


def compare_steps(args, sgd_op, **kwargs):
    """STEPS direct steps against the autograd steps of a twin, both made by make(*args, **kwargs); sgd_op:
    whether the SGD op takes the steps (from the second). Returns the direct step's model."""
    dtype = args[0]
    model, criterion, opt = make(*args, **kwargs)
    twin, twin_criterion, twin_opt = make(*args, **kwargs)
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x, y = torch.randn(16, 10, generator=gen, dtype=dtype), torch.randn(16, 12, generator=gen, dtype=dtype)
        expected = autograd_step(model, criterion, opt, x, y, 100 + step)
        got = direct(x, y, torch.tensor(100 + step))
        # SGD: the first step is the optimiser's own (it makes the momentum buffers), then the op's.
        assert (direct._sgd_settings() is not None) == sgd_op
        for name, a, e in zip(expected._fields, got, expected):
            assert_same(a, e.detach(), dtype, f"step {step} term {name}", update_rounding=sgd_op)
    assert_same_state(twin, twin_opt, model, opt, dtype, update_rounding=sgd_op)
    return twin


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
@pytest.mark.parametrize("decorrelation", ["second_moment", "correlation"])
@pytest.mark.parametrize("decorrelation_input", ["after_dropout", "before_dropout"])
@pytest.mark.parametrize("dropout", [0.0, [0.5, 0.0, 0.3]])
def test_direct_steps_equal_autograd_steps(dtype, opt_name, order, decorrelation, decorrelation_input, dropout):
    compare_steps((dtype, order, dropout, decorrelation, decorrelation_input, opt_name), sgd_op=opt_name == "sgd")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_direct_step_with_a_fixed_repr_scale_equals_autograd_step(dtype, opt_name, order):
    """repr_affine=False: the fixed gamma and beta reach the ops as constants and take no update; the SGD
    op (which updates every slot in place) stands aside for the gradients op and the optimiser."""
    args = (dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", opt_name)
    twin = compare_steps(args, sgd_op=False, repr_affine=False)
    for bn in (twin.bn_x[1], twin.bn_y[1]):
        assert torch.equal(bn.gamma, torch.ones(6, dtype=dtype)) and torch.equal(bn.beta, torch.zeros(6, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("repr_affine", [True, False])
@pytest.mark.parametrize("decorrelation", ["second_moment", "correlation"])
def test_direct_steps_with_log_midway_equal_autograd_steps(dtype, opt_name, repr_affine, decorrelation):
    """The log mid-way term in both step ops (twoway_sgd_step from the second SGD step where the op applies,
    repr_affine=True; twoway_step_gradients otherwise) against the autograd step on the loss op."""
    args = (dtype, "act_then_bn", [0.5, 0.0, 0.3], decorrelation, "before_dropout", opt_name)
    compare_steps(args, sgd_op=opt_name == "sgd" and repr_affine, repr_affine=repr_affine, midway="log")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_direct_steps_with_a_linear_representation_equal_autograd_steps(dtype, opt_name, order):
    """repr_linear in both step ops (twoway_sgd_step from the second SGD step, twoway_step_gradients with
    Adam) against the autograd step."""
    args = (dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", opt_name)
    compare_steps(args, sgd_op=opt_name == "sgd", repr_linear=True, midway="log")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("repr_affine", [True, False])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
@pytest.mark.parametrize("repr_linear", [False, True])
def test_step_gradients_with_log_midway_equal_the_reference_step(dtype, repr_affine, order, repr_linear):
    """twoway_step_gradients (DirectStep with Adam) against autograd through the plain-PyTorch reference:
    the terms and every gradient of one step, the log mid-way term with a learned or a fixed scale at the
    representation, a rectified or a linear one."""
    model, criterion, opt = make(dtype, order, [0.5, 0.0, 0.3], "correlation", "before_dropout", "adam",
                                 repr_affine=repr_affine, midway="log", repr_linear=repr_linear)
    ref = copy.deepcopy(model)
    ref.backend = "reference"
    x, y = torch.randn(16, 10, dtype=dtype), torch.randn(16, 12, dtype=dtype)
    want = TwoWayLoss(ref, lh=0.7, lc=0.3, wd=0.02, lg=0.04, decorrelation="correlation",
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


@pytest.mark.parametrize("variant", SGD_VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
def test_sgd_step_op_takes_torch_sgd_update(variant):
    # Every SGD setting the op reads, and an lr changed between steps (as a scheduler does), against
    # torch.optim.SGD after the autograd step, in float64: the update's last-bit roundings only.
    model, criterion, _ = make(torch.float64, "bn_then_act", [0.5, 0.0, 0.3], "second_moment", "after_dropout", "sgd")
    twin, twin_criterion, _ = make(torch.float64, "bn_then_act", [0.5, 0.0, 0.3], "second_moment", "after_dropout",
                                   "sgd")
    opt, twin_opt = (torch.optim.SGD(m.parameters(), lr=0.05, **variant) for m in (model, twin))
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    gen = torch.Generator().manual_seed(2)
    for step in range(3):
        for o in (opt, twin_opt):
            o.param_groups[0]["lr"] = 0.05 / (step + 1)
        x, y = torch.randn(16, 10, generator=gen, dtype=torch.float64), torch.randn(16, 12, generator=gen,
                                                                                   dtype=torch.float64)
        autograd_step(model, criterion, opt, x, y, step)
        direct(x, y, step)
        assert step == 0 and variant["momentum"] != 0 or direct._sgd_settings() is not None
    assert_same_state(twin, twin_opt, model, opt, torch.float64, update_rounding=True)


def frozen_bias(model, opt):
    model.x_bias[0].requires_grad_(False)


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


@pytest.mark.parametrize("change", [frozen_bias, two_groups, step_hook, non_contiguous_weight])
def test_sgd_the_op_cannot_stand_for_takes_the_optimiser(change):
    # A frozen parameter, two parameter groups, a step hook, a non-contiguous weight: the optimiser's own
    # update, as the autograd step (the op would update the frozen bias, take one lr for both groups, skip
    # the hook, or refuse the weight it cannot update in place).
    model, criterion, opt = make(torch.float64, "act_then_bn", 0.5, "second_moment", "after_dropout", "sgd")
    twin, twin_criterion, twin_opt = make(torch.float64, "act_then_bn", 0.5, "second_moment", "after_dropout", "sgd")
    change(model, opt)
    change(twin, twin_opt)
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    frozen = twin.x_bias[0].detach().clone()
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        x, y = torch.randn(16, 10, generator=gen, dtype=torch.float64), torch.randn(16, 12, generator=gen,
                                                                                   dtype=torch.float64)
        autograd_step(model, criterion, opt, x, y, step)
        direct(x, y, step)
        assert direct._sgd_settings() is None
    assert_same_state(twin, twin_opt, model, opt, torch.float64)
    if change is frozen_bias:
        assert torch.equal(twin.x_bias[0], frozen)


def sgd_step_args(dtype=torch.float32, midway="sum"):
    model, criterion, _ = make(dtype, "act_then_bn", [0.5, 0.0, 0.3], "correlation", "before_dropout", "sgd",
                               midway=midway)
    step = DirectStep(model, criterion, torch.optim.SGD(model.parameters(), lr=0.1))
    params = [[p.detach().clone() for p in ps] for ps in (step.weights, step.bias, step.gamma, step.beta)]
    x, y = torch.randn(16, 10, dtype=dtype), torch.randn(16, 12, dtype=dtype)
    buffers = [torch.randn_like(p) for ps in params for p in ps]
    return [x, y, *params, step.states, model.dropout, model.repr_layer, model.leaks, model.bn_eps, model.act_first,
            step.coefficients, step.loss_options, step.eps, buffers, 0.1, 0.9, 0.1, True, 0.01, False]


@pytest.mark.parametrize("midway", ["sum", "log"])
def test_step_gradients_opcheck(midway):
    args = sgd_step_args(midway=midway)[:15]
    torch.library.opcheck(torch.ops.twoway_fast.twoway_step_gradients.default, args)


def test_step_gradients_of_a_non_contiguous_weight():
    # The gradients op reads the weights for the weight decay too: a transposed view must count as the
    # same values, not its storage order.
    args = sgd_step_args(torch.float64)[:15]
    weights = [w.clone() for w in args[2]]
    expected = torch.ops.twoway_fast.twoway_step_gradients.default(*args)
    args[2] = [w.T.contiguous().T if w.dim() == 2 else w for w in weights]
    assert not args[2][0].is_contiguous()
    got = torch.ops.twoway_fast.twoway_step_gradients.default(*args)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("midway", ["sum", "log"])
def test_sgd_step_opcheck(midway):
    # Not test_aot_dispatch_*: functionalisation does not take a custom op mutating tensor lists, and the
    # op is DirectStep's, which runs eagerly (the compiled step is the autograd one).
    with torch.no_grad():  # the op updates in place, outside autograd (it says so otherwise)
        torch.library.opcheck(torch.ops.twoway_fast.twoway_sgd_step.default, sgd_step_args(midway=midway),
                              test_utils=("test_schema", "test_faketensor"))


def test_sgd_step_op_rejects_grad_mode_bad_buffers_and_parameters():
    op = torch.ops.twoway_fast.twoway_sgd_step.default
    with pytest.raises(RuntimeError, match=r"updates parameters in place: call it under torch.no_grad\(\)"):
        op(*sgd_step_args())
    with torch.no_grad():
        check_bad_buffers_and_parameters(op)


def check_bad_buffers_and_parameters(op):
    args = sgd_step_args()
    args[15] = args[15][:-1]
    with pytest.raises(RuntimeError, match=r"momentum_buffers must hold one buffer per parameter \(24\), got 23"):
        op(*args)
    args = sgd_step_args()
    args[15][3] = args[15][3].double()
    with pytest.raises(RuntimeError, match="momentum buffer 3 must be a contiguous tensor like its parameter"):
        op(*args)
    args = sgd_step_args()
    with pytest.raises(RuntimeError, match="momentum_buffers must be empty when momentum is 0"):
        op(*args[:17], 0.0, *args[18:])
    args = sgd_step_args()
    args[2][0] = args[2][0].T.contiguous().T  # same shape, not contiguous
    with pytest.raises(RuntimeError, match="parameter 0 must be contiguous to be updated in place"):
        op(*args)


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
    # SGD: the op's update from the second step on, with the preset's lr schedule (learned gamma and beta
    # everywhere: with fixed ones the SGD op stands aside, test_direct_step_with_a_fixed_repr_scale...).
    digits = data.load("digits", data.DataConfig(preprocess="none"))
    preset = presets.resolve("mnist", overrides=["model.hidden=[16,8,16]", "model.repr_affine=true",
                                                 "train.batch_size=128",
                                                 f"train.optimizer='{optimizer}'", "train.lr=0.001",
                                                 "train.epochs=2", "train.lr_milestones=[1]"])
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
    assert (direct.step._sgd_settings() is not None) == (optimizer == "SGD")
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(direct.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for d, e in zip(direct_log, eager_log):
        torch.testing.assert_close(d["train"], e["train"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d["val"]["total"], e["val"]["total"], rtol=1e-5, atol=1e-6)
