"""TwoWayNet and TwoWayLoss: the public API, the fused backend against the reference, presets."""
import copy
import re

import pytest
import torch

import twoway_fast
from twoway_fast import _extension, presets
from twoway_fast.backends import fused_unavailable_reason

from conftest import assert_close

needs_fused = pytest.mark.skipif(bool(fused_unavailable_reason(torch.device("cpu"))),
                                 reason="twoway_fast._C is not built")

CONFIGS = {
    "mnist-like": dict(dx=12, dy=10, hidden=[16, 5, 16], dropout=[0.5, 0.0, 0.5]),
    "bn_then_act": dict(dx=9, dy=14, hidden=[8, 12, 20], order="bn_then_act", dropout=0.5),
    "locally-dense": dict(dx=8, dy=12, hidden=[6, 4], locally_dense={0: 2, -1: 2}, dropout=0.3),
    "fixed-repr-scale": dict(dx=12, dy=10, hidden=[16, 5, 16], dropout=[0.5, 0.0, 0.5], repr_affine=False),
}
LOSS = [dict(), dict(lh=2.0, lc=2.0, decorrelation="correlation", decorrelation_input="before_dropout"),
        dict(midway="log"),
        dict(lh=2.0, lc=2.0, decorrelation="correlation", decorrelation_input="before_dropout", reconstruction="mean",
             midway="log")]


def step(model, criterion, x, y, seed):
    model.zero_grad()
    out = model(x, y, seed=seed)
    terms = criterion(out, x, y)
    terms.total.backward()
    return out, terms, {k: p.grad.clone() for k, p in model.named_parameters()}


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_kw", LOSS, ids=["faithful-loss", "tuned-loss", "log-midway", "tuned-log-midway"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_fused_training_step_matches_reference(config, loss_kw, dtype):
    kw = dict(CONFIGS[config])
    fused = twoway_fast.TwoWayNet(kw.pop("dx"), kw.pop("dy"), **kw, backend="fused").to(dtype)
    ref = copy.deepcopy(fused)
    ref.backend = "reference"
    x, y = torch.randn(33, fused.dx, dtype=dtype), torch.randn(33, fused.dy, dtype=dtype)
    got = step(fused, twoway_fast.TwoWayLoss(fused, **loss_kw), x, y, seed=77)
    want = step(ref, twoway_fast.TwoWayLoss(ref, **loss_kw), x, y, seed=77)
    for name, a, b in zip(got[0]._fields, got[0], want[0]):
        assert_close(a, b, dtype, name)
    for name, a, b in zip(got[1]._fields, got[1], want[1]):
        assert_close(a, b, dtype, name)
    for name in want[2]:
        assert_close(got[2][name], want[2][name], dtype, f"grad of {name}")
    for (name, a), b in zip(fused.named_buffers(), ref.buffers()):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
def test_fixed_repr_scale_keeps_gamma_one_and_beta_zero(backend):
    """repr_affine=False: the representation's batch norms have no parameters; training leaves them at
    gamma = 1, beta = 0, and the loss counts them as constants (no gradient reaches them)."""
    torch.manual_seed(0)
    model = twoway_fast.TwoWayNet(12, 10, [16, 5, 16], dropout=0.0, repr_affine=False, bn_eps=1e-9,
                                  backend=backend)
    learned = {name for name, _ in model.named_parameters()}
    assert {"bn_x.1.gamma", "bn_x.1.beta", "bn_y.1.gamma", "bn_y.1.beta"}.isdisjoint(learned)
    assert {"bn_x.0.gamma", "bn_y.2.beta"} <= learned
    criterion = twoway_fast.TwoWayLoss(model, lg=0.5, wd=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(40, 12), torch.randn(40, 10)
    for seed in range(5):
        terms = criterion(model(x, y, seed=seed), x, y)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
    for bn in (model.bn_x[1], model.bn_y[1]):
        assert torch.equal(bn.gamma, torch.ones(5)) and torch.equal(bn.beta, torch.zeros(5))
    # In training mode the representation is exactly standardised per batch (no dropout there).
    out = model(x, y, seed=9)
    assert_close(out.hx.mean(0), torch.zeros(5), torch.float32, "batch mean")
    assert_close(out.hx.var(0, unbiased=False), torch.ones(5), torch.float32, "batch variance")


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
def test_usual_training_loop_reduces_the_loss(backend):
    shared = torch.randn(256, 3)  # both views are linear images of one 3-d signal
    x, y = shared @ torch.randn(3, 8) / 2, shared @ torch.randn(3, 6) / 2
    model = twoway_fast.TwoWayNet(8, 6, [16, 3, 16], dropout=[0.2, 0.0, 0.2], backend=backend)
    criterion = twoway_fast.TwoWayLoss(model, lh=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(60):
        out = model(x, y)
        terms = criterion(out, x, y)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_reconstruction_mean_divides_the_reconstruction_weights_by_the_widths():
    torch.manual_seed(0)
    model = twoway_fast.TwoWayNet(12, 10, [16, 5, 16], backend="reference")
    x, y = torch.randn(20, 12), torch.randn(20, 10)
    out = model(x, y, seed=1)
    mean = twoway_fast.TwoWayLoss(model, lx=2.0, ly=3.0, reconstruction="mean")(out, x, y)
    summed = twoway_fast.TwoWayLoss(model, lx=2.0 / 12, ly=3.0 / 10)(out, x, y)
    for name, a, b in zip(mean._fields, mean, summed):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        twoway_fast.TwoWayLoss(model, reconstruction="median")


def test_default_representation_is_the_middle_position():
    assert twoway_fast.TwoWayNet(4, 4, [8, 6, 3, 6, 8]).repr_layer == 2
    assert twoway_fast.TwoWayNet(4, 4, [8, 6, 8]).repr_layer == 1
    assert twoway_fast.TwoWayNet(4, 4, [8]).repr_layer == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=[]), "non-empty"),
    (dict(repr_layer=3), "repr_layer"),
    (dict(order="bn_act"), "order must be one of"),
    (dict(dropout=1.0), r"\[0, 1\)"),
    (dict(dropout=[0.5, 0.5]), "one per hidden position"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(locally_dense={5: 2}), "weights 0..3"),
])
def test_bad_configuration_is_refused(kwargs, message):
    args = dict(dx=4, dy=4, hidden=[8, 2, 8]) | kwargs
    with pytest.raises(ValueError, match=message):
        twoway_fast.TwoWayNet(**args)


def test_bad_views_are_refused():
    model = twoway_fast.TwoWayNet(4, 3, [5])
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\), got \(8, 5\)"):
        model(torch.randn(8, 5), torch.randn(8, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        model(torch.randn(8, 4), torch.randn(7, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        model(torch.randn(1, 4), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"y must have shape \(batch, 3\)"):
        model.encode_y(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        model(torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"y is on meta but the model's parameters are on cpu"):
        model(torch.randn(8, 4), torch.randn(8, 3, device="meta"))
    with pytest.raises(ValueError, match="empty"):
        model(torch.randn(0, 4), torch.randn(0, 3))
    model.eval()(torch.randn(1, 4), torch.randn(1, 3))  # one row is fine in eval mode


def test_loss_refuses_unknown_variants():
    model = twoway_fast.TwoWayNet(4, 4, [8])
    with pytest.raises(ValueError, match="decorrelation must be one of"):
        twoway_fast.TwoWayLoss(model, decorrelation="covariance")
    with pytest.raises(ValueError, match="decorrelation_input"):
        twoway_fast.TwoWayLoss(model, decorrelation_input="during")
    with pytest.raises(ValueError, match=r"midway must be one of \('sum', 'log'\) \(the mid-way term's form\), got 'l2'"):
        twoway_fast.TwoWayLoss(model, midway="l2")


def test_loss_repr_names_its_variants():
    model = twoway_fast.TwoWayNet(4, 4, [8])
    assert "midway='sum'" in repr(twoway_fast.TwoWayLoss(model))
    assert "reconstruction='mean', midway='log', decorrelation='second_moment'" in repr(
        twoway_fast.TwoWayLoss(model, reconstruction="mean", midway="log"))


def test_import_refuses_another_torch(monkeypatch):
    from twoway_fast import _build_info

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=rf"built against torch 1\.0\.0 but torch {re.escape(torch.__version__)}.*pip install"):
        _extension.load()


def test_presets_follow_the_spec():
    assert {"coco", "flickr30k", "flickr8k", "mnist", "xrmb"} <= set(presets.names())
    table = {  # docs/method.md#training: hidden, r, order, lh, lc, epochs (faithful)
        "mnist": ([392, 50, 392], 1, "act_then_bn", 0.5, 0.05, 80),
        "xrmb": ([560, 280, 112, 680, 1365], 2, "act_then_bn", 0.5, 0.05, 60),
        "flickr8k": ([2000, 3000, 4000], 1, "bn_then_act", 0.25, 0.5, 100),
        "flickr30k": ([2000, 3000, 16000], 1, "bn_then_act", 0.25, 0.5, 100),
        "coco": ([2000, 3000, 16000], 1, "bn_then_act", 0.25, 0.5, 100),
    }
    for name, (hidden, r, order, lh, lc, epochs) in table.items():
        p = presets.get(name, faithful=True)
        assert (p.model["hidden"], p.model["repr_layer"], p.model["order"]) == (hidden, r, order)
        assert (p.loss["lh"], p.loss["lc"], p.train["epochs"]) == (lh, lc, epochs)
        assert p.model["dropout"] == 0.5 and p.model["bn_eps"] == 1e-3
        assert (p.loss["decorrelation"], p.loss["decorrelation_input"]) == ("second_moment", "after_dropout")
        assert (p.loss["lx"], p.loss["ly"], p.loss["wd"], p.loss["lg"]) == (1.0, 1.0, 0.05, 0.05)
        assert (p.train["lr"], p.train["momentum"], p.train["nesterov"]) == (1e-4, 0.9, True)
        assert (p.train["lr_milestones"], p.train["lr_gamma"], p.train["batch_size"]) == ([20, 40, 60, 80], 0.5, 128)
        assert p.model.get("repr_affine", True) is True and p.loss.get("reconstruction", "sum") == "sum"
        tuned = presets.get(name)
        dropout = tuned.model["dropout"]
        assert (dropout if isinstance(dropout, float) else dropout[r]) == 0.0 and tuned.model["bn_eps"] == 1e-5
    assert presets.get("flickr30k").model["locally_dense"] == {"-1": 2}
    model = presets.get("flickr30k").build_model(4096, 6000, backend="reference")
    assert model.weights[-1].shape == (2, 3000, 8000)


def test_preset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'mnits'; available: coco"):
        presets.get("mnits")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nhidden = [1]")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        presets.load(bad)
    with pytest.raises(ValueError, match="cannot read preset file"):
        presets.load(tmp_path / "missing.toml")


def test_auto_uses_fused_only_on_verified_devices(monkeypatch):
    from twoway_fast.backends import resolve as backend

    monkeypatch.setattr(backend, "_has_kernels", lambda device_type: True)
    monkeypatch.setattr(backend, "EXTENSION", object())
    with pytest.warns(UserWarning, match="not yet verified on hardware"):
        assert backend.resolve_backend("auto", torch.device("meta")).name == "reference"
    assert backend.resolve_backend("fused", torch.device("meta")).name == "fused"
