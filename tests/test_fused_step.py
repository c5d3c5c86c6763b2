"""The direct training step (twoway_fast.fused_step: the ops and their backward ops without autograd)
against the autograd step of the fused backend: same parameters, optimiser state and BN running
statistics after several steps, and the same Trainer run."""
import copy

import pytest
import torch

from twoway_fast import TwoWayNet, data, presets
from twoway_fast.loss import TwoWayLoss
from twoway_fast.train import Trainer, TrainConfig, build

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from twoway_fast.fused_step import DirectStep, direct_step_applies  # noqa: E402

STEPS, FIRST_ROW = 4, 5


def optimizer(name, model):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=0.01)


def make(dtype, order, dropout, decorrelation, decorrelation_input, opt_name):
    torch.manual_seed(3)
    model = TwoWayNet(10, 12, [8, 6, 8], order=order, dropout=dropout, locally_dense={-1: 2},
                      backend="fused").to(dtype)
    with torch.no_grad():  # biases and betas not 0, so that every gradient path counts
        for p in [*model.x_bias, *model.y_bias, *(bn.beta for bn in [*model.bn_x, *model.bn_y])]:
            p.normal_(0, 0.1)
    criterion = TwoWayLoss(model, lh=0.7, lc=0.3, wd=0.02, lg=0.04, decorrelation=decorrelation,
                           decorrelation_input=decorrelation_input)
    return model, criterion, optimizer(opt_name, model)


def autograd_step(model, criterion, opt, x, y, seed):
    terms = criterion(model(x, y, seed=seed, first_row=FIRST_ROW), x, y)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    opt.step()
    return terms


def assert_same(actual, expected, dtype, what):
    # Both steps run the same kernels on the same inputs, and the gradient sums they differ in have two
    # terms (a + b == b + a): measured bit-identical over 20 steps of every case. The tolerances allow
    # the rounding of a reordered sum, nothing more.
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
@pytest.mark.parametrize("decorrelation", ["second_moment", "correlation"])
@pytest.mark.parametrize("decorrelation_input", ["after_dropout", "before_dropout"])
@pytest.mark.parametrize("dropout", [0.0, [0.5, 0.0, 0.3]])
def test_direct_steps_equal_autograd_steps(dtype, opt_name, order, decorrelation, decorrelation_input, dropout):
    model, criterion, opt = make(dtype, order, dropout, decorrelation, decorrelation_input, opt_name)
    twin, twin_criterion, twin_opt = make(dtype, order, dropout, decorrelation, decorrelation_input, opt_name)
    direct = DirectStep(twin, twin_criterion, twin_opt, first_row=FIRST_ROW)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x, y = torch.randn(16, 10, generator=gen, dtype=dtype), torch.randn(16, 12, generator=gen, dtype=dtype)
        expected = autograd_step(model, criterion, opt, x, y, 100 + step)
        got = direct(x, y, torch.tensor(100 + step))
        for name, a, e in zip(expected._fields, got, expected):
            assert_same(a, e.detach(), dtype, f"step {step} term {name}")
    for name, e in model.state_dict().items():  # parameters and BN running statistics
        assert_same(twin.state_dict()[name], e, dtype, name)
    names = dict(zip(map(id, model.parameters()), (n for n, _ in model.named_parameters())))
    twins = dict(zip(names.values(), twin.parameters()))
    for p in model.parameters():
        name = names[id(p)]
        assert_same(twins[name].grad, p.grad, dtype, f"grad {name}")
        for key, value in opt.state[p].items():
            assert_same(twin_opt.state[twins[name]][key], value, dtype, f"optimiser state {key} of {name}")


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


def test_trainer_with_the_direct_step_equals_the_trainer_without():
    digits = data.load("digits", data.DataConfig(preprocess="none"))
    preset = presets.resolve("mnist", overrides=["model.hidden=[16,8,16]", "train.batch_size=128",
                                                 "train.optimizer='Adam'", "train.lr=0.001", "train.epochs=2"])
    config = TrainConfig(**preset.train)
    runs = []
    for direct in (True, False):
        model, criterion = build(preset, digits.dx, digits.dy, config.seed)
        trainer = Trainer(model, criterion, digits.train, digits.val, config, None, progress=False)
        assert isinstance(trainer.step, DirectStep)  # the fused backend on the CPU: it applies
        if not direct:
            trainer.step = trainer._eager_step
        runs.append((trainer, trainer.fit()))
    (direct, direct_log), (eager, eager_log) = runs
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(direct.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for d, e in zip(direct_log, eager_log):
        torch.testing.assert_close(d["train"], e["train"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d["val"]["total"], e["val"]["total"], rtol=1e-5, atol=1e-6)
