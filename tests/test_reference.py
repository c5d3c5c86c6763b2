"""The method (docs/method.md) pinned by small hand-checkable cases on the plain-PyTorch reference."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import twoway_fast
from twoway_fast import reference
from twoway_fast.reference import TwoWayOutput

from conftest import assert_close


def words(*values):
    return [torch.tensor(v, dtype=torch.int64) for v in values]


@pytest.mark.parametrize("counter, key, expected", [
    # Known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    out = reference.philox4x32(*words(*counter), *words(*key))
    assert [int(v) for v in out] == list(expected)


def test_dropout_mask_rate_scale_and_determinism():
    state = torch.tensor([987654321, 7, 0])
    mask = reference.dropout_mask(state, 400, 500, 0.3, torch.float64)
    values = set(mask.unique().tolist())
    assert values == {0.0, 1 / math.sqrt(0.7)}, "survivors are scaled by 1/sqrt(1-p), not 1/(1-p)"
    keep = (mask > 0).double().mean().item()
    assert abs(keep - 0.7) < 0.005  # 200k Bernoulli(0.7) draws: std 0.001
    assert torch.equal(mask, reference.dropout_mask(state, 400, 500, 0.3, torch.float64))
    other = reference.dropout_mask(torch.tensor([987654321, 8, 0]), 400, 500, 0.3, torch.float64)
    assert (mask != other).double().mean() > 0.3, "another offset gives another mask"
    shifted = reference.dropout_mask(torch.tensor([987654321, 7, 5]), 10, 500, 0.3, torch.float64)
    assert torch.equal(shifted, mask[5:15]), "first_row: masks follow the global row index"
    assert reference.dropout_mask(state, 4, 4, 0.0, torch.float32) is None


def small_net(order="act_then_bn", hidden=(3, 5), dx=2, dy=4, **kw):
    net = twoway_fast.TwoWayNet(dx, dy, list(hidden), order=order, backend="reference", **kw).double()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1)
        for bn in [*net.bn_x, *net.bn_y]:
            bn.gamma.uniform_(0.5, 1.5)
    return net


def test_channels_use_transposed_weights_in_reverse_and_own_biases():
    net = small_net(dropout=0.0).eval()
    with torch.no_grad():
        for bn in [*net.bn_x, *net.bn_y]:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_std.uniform_(0.5, 2.0)
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    W1, W2, W3 = net.weights

    def block(z, bn):  # act_then_bn, eval: LeakyReLU then the running statistics
        return bn.gamma * (F.leaky_relu(z, 0.3) - bn.running_mean) / bn.running_std + bn.beta

    hx0 = block(x @ W1.T + net.x_bias[0], net.bn_x[0])
    hx1 = block(hx0 @ W2.T + net.x_bias[1], net.bn_x[1])
    y_hat = hx1 @ W3.T + net.x_bias[2]
    hy1 = block(y @ W3 + net.y_bias[1], net.bn_y[1])  # Y starts with W3^T at the last position
    hy0 = block(hy1 @ W2 + net.y_bias[0], net.bn_y[0])
    x_hat = hy0 @ W1 + net.y_bias[2]
    out = net(x, y)
    assert net.repr_layer == 1
    for got, want in zip(out[:4], (x_hat, y_hat, hx1, hy1)):
        assert_close(got, want, torch.float64)
    assert_close(net.encode_x(x), hx1, torch.float64)
    assert_close(net.encode_y(y), hy1, torch.float64)
    assert torch.equal(net(x, y).x_hat, out.x_hat), "eval mode is deterministic"
    params = dict(net.named_parameters())
    assert sum(1 for k in params if k.startswith("weights.")) == 3, "only W_1..W_{n+1} exist"
    assert params["x_bias.0"] is not params["y_bias.0"]


@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_repr_linear_leaves_out_the_activation_at_the_representation_only(order):
    torch.manual_seed(4)
    net = small_net(order, hidden=(3, 5, 3), dropout=0.0, repr_linear=True).eval()
    assert net.leaks == [0.3, 1.0, 0.3]
    with torch.no_grad():
        for bn in [*net.bn_x, *net.bn_y]:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_std.uniform_(0.5, 2.0)
    x = torch.randn(6, 2, dtype=torch.float64)

    def block(z, bn, leak):
        u = F.leaky_relu(z, leak) if order == "act_then_bn" else z
        out = bn.gamma * (u - bn.running_mean) / bn.running_std + bn.beta
        return out if order == "act_then_bn" else F.leaky_relu(out, leak)

    h0 = block(x @ net.weights[0].T + net.x_bias[0], net.bn_x[0], 0.3)
    code = block(h0 @ net.weights[1].T + net.x_bias[1], net.bn_x[1], 1.0)  # linear: no LeakyReLU
    assert_close(net.encode_x(x), code, torch.float64)
    rectified = small_net(order, hidden=(3, 5, 3), dropout=0.0).eval()
    rectified.load_state_dict(net.state_dict())
    assert not torch.allclose(rectified.encode_x(x), code), "the slope at the representation matters here"


def test_mirrored_positions_share_the_dropout_mask():
    net = small_net(hidden=(40, 30, 40), dx=8, dy=8, dropout=0.5)
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randn(64, 8, dtype=torch.float64)
    out = net.train()(x, y, seed=123)
    dropped_x, dropped_y = out.hx == 0, out.hy == 0
    assert dropped_x.double().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.equal(dropped_x, dropped_y)
    expected = reference.dropout_mask(reference.rng_states(torch.tensor(123), 3)[1], 64, 30, 0.5, torch.float64)
    assert torch.equal(out.hx, out.hx_pre * expected)
    assert not torch.equal(out.hx, net(x, y, seed=124).hx), "another seed, another mask"


@pytest.mark.parametrize("order", ["act_then_bn", "bn_then_act"])
def test_training_block_order_and_running_statistics(order):
    net = small_net(order=order, hidden=(6,), dx=3, dy=3, dropout=0.0, bn_eps=1e-3)
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    out = net.train()(x, y, seed=0)
    bn = net.bn_x[0]
    z = x @ net.weights[0].T + net.x_bias[0]
    u = F.leaky_relu(z, 0.3) if order == "act_then_bn" else z
    mean, std = u.mean(0), torch.sqrt(u.var(0, unbiased=False) + 1e-3)
    want = bn.gamma * (u - mean) / std + bn.beta
    if order == "bn_then_act":
        want = F.leaky_relu(want, 0.3)
    assert_close(out.hx, want, torch.float64)
    assert_close(bn.running_mean, 0.01 * mean, torch.float64)
    assert_close(bn.running_std, 0.99 + 0.01 * std, torch.float64)


def test_locally_dense_is_block_diagonal():
    net = small_net(hidden=(4,), dx=6, dy=8, locally_dense={-1: 2}, dropout=0.0).eval()
    assert net.weights[1].shape == (2, 4, 2)
    full = reference.full_weight(net.weights[1])
    assert full.shape == (8, 4)
    assert torch.count_nonzero(full[:4, 2:]) == 0 and torch.count_nonzero(full[4:, :2]) == 0
    a = torch.randn(5, 4, dtype=torch.float64)
    part0 = a[:, :2] @ net.weights[1][0].T
    assert_close(reference.tied_linear(a, net.weights[1], torch.zeros(8, dtype=torch.float64), False)[:, :4],
                 part0, torch.float64)
    with pytest.raises(ValueError, match="divide by M = 3"):
        twoway_fast.TwoWayNet(6, 8, [4], locally_dense={-1: 3})


def test_glorot_uniform_bounds():
    w = reference.glorot_uniform_(torch.empty(300, 100))
    bound = math.sqrt(6 / 400)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(w.var().item() - bound**2 / 3) < 0.05 * bound**2


def test_loss_terms_by_hand():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0], [1.0]], dtype=torch.float64)
    out = TwoWayOutput(
        x_hat=torch.tensor([[1.5, 2.0], [0.0, 0.0]], dtype=torch.float64),  # errors 0.25 and 1
        y_hat=torch.tensor([[1.0], [1.0]], dtype=torch.float64),  # errors 4 and 0
        hx=torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64),
        hy=torch.tensor([[1.0, 0.0], [3.0, 5.0]], dtype=torch.float64),
        hx_pre=torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
        hy_pre=torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64),
    )
    w = [torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[3.0]], dtype=torch.float64)]
    g = [torch.tensor([0.5, 2.0], dtype=torch.float64)]
    t = reference.loss(out, x, y, w, g, lx=1, ly=2, lh=3, lc=4, wd=5, lg=6)
    assert t.recon_x.item() == pytest.approx((0.25 + 1) / 2)
    assert t.recon_y.item() == pytest.approx(4 / 2)
    assert t.midway.item() == pytest.approx((4 + 1) / 2)
    # Cx = hx^T hx / 2 = [[5, 7], [7, 10]]; Cy = [[5, 7.5], [7.5, 12.5]]
    assert t.decorr_x.item() == pytest.approx(math.sqrt(25 + 49 + 49 + 100) - math.sqrt(25 + 100))
    assert t.decorr_y.item() == pytest.approx(math.sqrt(25 + 2 * 56.25 + 156.25) - math.sqrt(25 + 156.25))
    assert t.weight_decay.item() == pytest.approx(1 + 4 + 9 + 0.25 + 4)
    assert t.gamma_penalty.item() == pytest.approx(4 + 0.25)
    want = 0.625 + 2 * 2 + 3 * 2.5 + 4 * (t.decorr_x + t.decorr_y).item() + 5 * 18.25 + 6 * 4.25
    assert t.total.item() == pytest.approx(want)
    # Cxy = hx^T hy / 2 = [[5, 7.5], [7, 10]]: the cross-view term, weighed by lxy (0 unless given)
    assert t.decorr_xy.item() == pytest.approx(math.sqrt(25 + 56.25 + 49 + 100) - math.sqrt(25 + 100))
    t_xy = reference.loss(out, x, y, w, g, lx=1, ly=2, lh=3, lc=4, wd=5, lg=6, lxy=7)
    assert t_xy.total.item() == pytest.approx(want + 7 * t.decorr_xy.item())
    # Uniformity: hx's rows, centred, point the same way (log exp(4 (1 - 1)) = 0), hy's opposite ways
    # (log exp(4 (-1 - 1)) = -8); weighed by lu (0 unless given)
    assert t.uniform_x.item() == pytest.approx(0, abs=1e-12) and t.uniform_y.item() == pytest.approx(-8)
    t_u = reference.loss(out, x, y, w, g, lx=1, ly=2, lh=3, lc=4, wd=5, lg=6, lu=0.5)
    assert t_u.total.item() == pytest.approx(want - 4)
    # before_dropout: diagonal second moments, nothing off the diagonal to penalise
    t = reference.loss(out, x, y, w, g, decorrelation_input="before_dropout")
    assert t.decorr_x.item() == pytest.approx(0) and t.decorr_y.item() == pytest.approx(0)
    # the log mid-way term: d = (0, (4 + 1) / 2) per dimension, the first matched exactly
    t = reference.loss(out, x, y, w, g, lx=1, ly=2, lh=3, lc=4, wd=5, lg=6, midway_form="log")
    assert t.midway.item() == pytest.approx(math.log(1e-3) + math.log(2.5 + 1e-3))
    assert t.total.item() == pytest.approx(want + 3 * (t.midway.item() - 2.5))


def test_correlation_decorrelation_against_numpy():
    h = torch.randn(50, 4, dtype=torch.float64)
    h[:, 1] += 2 * h[:, 0]
    c = np.corrcoef(h.numpy(), rowvar=False)
    want = np.linalg.norm(c) - np.linalg.norm(np.diag(c))
    got = reference.decorrelation(h, "correlation", eps=0.0).item()
    assert got == pytest.approx(want, rel=1e-9)


def test_shared_weight_gradient_is_the_sum_of_both_channels():
    net = small_net(hidden=(3, 5), dropout=0.0).train()
    x, y = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    rx, ry = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    out = net(x, y, seed=0)
    ((out.y_hat * rx).sum() + (out.x_hat * ry).sum()).backward()

    # The same network with untied copies of W2: one for each channel.
    def block(z, bn):
        u = F.leaky_relu(z, 0.3)
        return reference.batch_norm_train(u, bn.gamma, bn.beta, net.bn_eps)[0]

    W1, W2, W3 = (w.detach() for w in net.weights)
    W2x, W2y = W2.clone().requires_grad_(), W2.clone().requires_grad_()
    hx = block(block(x @ W1.T + net.x_bias[0], net.bn_x[0]) @ W2x.T + net.x_bias[1], net.bn_x[1])
    hy = block(block(y @ W3 + net.y_bias[1], net.bn_y[1]) @ W2y + net.y_bias[0], net.bn_y[0])
    ((hx @ W3.T + net.x_bias[2]) * rx).sum().backward()
    ((hy @ W1 + net.y_bias[2]) * ry).sum().backward()
    assert_close(net.weights[1].grad, W2x.grad + W2y.grad, torch.float64)
    assert W2x.grad.abs().sum() > 0 and W2y.grad.abs().sum() > 0
