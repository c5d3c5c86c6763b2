"""The CUDA-graph training step (twoway_fast.step.graph, TrainConfig.cuda_graph): replays give the
eager steps' terms and parameters, across a learning-rate change (a new capture) and in the trainer;
torch.compile(fullgraph=True) and mode="reduce-overhead" steps equal eager ones. On a CPU the option
is refused with a clear error. The CUDA tests skip without a GPU (scripts/gpu_check.sh runs them)."""
import pytest
import torch

import twoway_fast
from twoway_fast import data
from twoway_fast.step.graph import CapturedStep
from twoway_fast.train import TrainConfig, Trainer

from fused_pairs import close

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_model(device="cuda", backend="fused"):
    torch.manual_seed(5)
    return twoway_fast.TwoWayNet(16, 12, [32, 8, 32], dropout=[0.3, 0.0, 0.3], backend=backend).to(device)


def make_optimizer(model, name):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def eager_step(model, optimizer):
    criterion = twoway_fast.TwoWayLoss(model)

    def step(x, y, seed):
        terms = criterion(model(x, y, seed=seed), x, y)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        return terms
    return step


def assert_same_state(got, want):
    for (name, a), (_, b) in zip([*got.named_parameters(), *got.named_buffers()],
                                 [*want.named_parameters(), *want.named_buffers()]):
        close(a.detach().cpu(), b.detach().cpu(), torch.float32, name)


def test_cuda_graph_option_is_refused_on_cpu():
    model = make_model("cpu", backend="reference")
    split = data.Split(torch.randn(64, 16), torch.randn(64, 12), None, torch.device("cpu"))
    with pytest.raises(ValueError, match="train.cuda_graph needs a CUDA device, but the training data is on cpu"):
        Trainer(model, twoway_fast.TwoWayLoss(model), split, None, TrainConfig(batch_size=32, cuda_graph=True),
                None, progress=False)
    optimizer = make_optimizer(model, "sgd")
    with pytest.raises(ValueError, match="a CUDA-graph step needs the data on a CUDA device, got cpu"):
        CapturedStep(eager_step(model, optimizer), optimizer)(torch.randn(4, 16), torch.randn(4, 12),
                                                              torch.tensor(1))


@cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replayed_steps_equal_eager_steps(optimizer):
    graphed, eager = make_model(), make_model()
    opt_graphed, opt_eager = make_optimizer(graphed, optimizer), make_optimizer(eager, optimizer)
    captured = CapturedStep(eager_step(graphed, opt_graphed), opt_graphed, warmup=3)
    plain = eager_step(eager, opt_eager)
    for i in range(9):
        if i == 6:  # what a scheduler does between epochs: the step is captured anew
            for opt in (opt_graphed, opt_eager):
                for group in opt.param_groups:
                    group["lr"] *= 0.5
        x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 12, device="cuda")
        seed = torch.tensor(100 + i)
        got, want = captured(x, y, seed), plain(x, y, seed)
        close(torch.stack(list(got)).detach().cpu(), torch.stack(list(want)).detach().cpu(), torch.float32,
              f"terms of step {i}")
    assert captured.graph is not None
    assert_same_state(graphed, eager)


@cuda
def test_trainer_with_cuda_graph_equals_eager_trainer():
    torch.manual_seed(6)
    x, y = torch.randn(256, 16, device="cuda"), torch.randn(256, 12, device="cuda")
    split = data.Split(x, y, None, torch.device("cuda"))
    config = dict(epochs=3, batch_size=32, optimizer="sgd", lr=0.01, lr_milestones=[1, 2])  # two recaptures
    models = []
    for cuda_graph in (True, False):
        model = make_model()
        trainer = Trainer(model, twoway_fast.TwoWayLoss(model), split, None,
                          TrainConfig(**config, cuda_graph=cuda_graph), None, progress=False)
        log = trainer.fit()
        models.append((model, log))
    (graphed, log_graphed), (eager, log_eager) = models
    assert_same_state(graphed, eager)
    for a, b in zip(log_graphed, log_eager):
        for name in b["train"]:
            assert a["train"][name] == pytest.approx(b["train"][name], rel=1e-4, abs=1e-6), name


@cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_step_equals_eager_step(mode):
    compiled, eager = make_model(), make_model()
    opt_compiled, opt_eager = make_optimizer(compiled, "sgd"), make_optimizer(eager, "sgd")

    def loss(model, criterion, x, y, seed):
        return criterion(model(x, y, seed=seed), x, y).total

    compiled_loss = torch.compile(loss, fullgraph=True, mode=mode)
    runs = [(compiled, compiled_loss, opt_compiled, twoway_fast.TwoWayLoss(compiled)),
            (eager, loss, opt_eager, twoway_fast.TwoWayLoss(eager))]
    for i in range(4):
        x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 12, device="cuda")
        seed = torch.tensor(7 + i, device="cuda")
        totals = []
        for model, f, opt, criterion in runs:
            opt.zero_grad(set_to_none=True)
            total = f(model, criterion, x, y, seed)
            total.backward()
            opt.step()
            totals.append(total.detach().cpu())
        close(totals[0], totals[1], torch.float32, f"loss of step {i}")
    assert_same_state(compiled, eager)
