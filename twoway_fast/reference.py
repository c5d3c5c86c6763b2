"""The plain-PyTorch 2-Way Net, written straight from the method page (docs/method.md).

It is the oracle for every fused kernel (tests compare against it), the fallback backend and the
benchmark baseline, so it stays plain: no fusion, no cleverness, one function per concept of the method.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Defined where the production code finds them without the oracle; still names of this module (noqa: the
# re-exports).
from .dropout import rng_states
from .init import glorot_uniform_  # noqa: F401
from .loss_variants import (DECORRELATION_FORMS, DECORRELATION_INPUTS, check_loss_variant,  # noqa: F401
                            check_midway, decorrelation_inputs, log_midway)
from .loss_terms import UNIFORMITY_EPS, UNIFORMITY_TEMPERATURE, LossTerms, with_total
from .types import TwoWayOutput

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


# ---------------------------------------------------------------- tied dropout (docs/method.md#the-network)

def _mulhilo32(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of a * m for a in [0, 2^32), exactly, with 16-bit halves (no int64 overflow)."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    m_lo, m_hi = m & 0xFFFF, m >> 16
    ll = a_lo * m_lo
    mid = a_lo * m_hi + a_hi * m_lo + (ll >> 16)
    lo = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    hi = a_hi * m_hi + (mid >> 16)
    return hi, lo


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor) -> list[Tensor]:
    """Philox4x32-10 on int64 tensors holding unsigned 32-bit words (Salmon et al., SC 2011)."""
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return [c0, c1, c2, c3]


def dropout_mask(rng_state: Tensor, rows: int, cols: int, p: float, dtype: torch.dtype) -> Tensor | None:
    """The tied-dropout multiplier of one hidden position: 0 or 1/sqrt(1-p), shape (rows, cols).

    rng_state = int64 (seed, offset, first_row). Element (row, col) is kept iff word col % 4 of
    Philox4x32-10(counter=(col // 4, first_row + row, offset_lo, offset_hi), key=(seed_lo, seed_hi))
    is below floor((1 - p) * 2^32). Identical to the kernels' mask (csrc/philox.h). None when p == 0.
    """
    if p == 0:
        return None
    keep_prob = 1.0 - p
    state = rng_state.to(torch.int64)
    device = state.device
    seed, offset, first_row = state[0], state[1], state[2]
    col = torch.arange(cols, device=device)
    row = torch.arange(rows, device=device).unsqueeze(1)
    words = philox4x32(
        (col >> 2).unsqueeze(0), (row + first_row) & MASK32, offset & MASK32, (offset >> 32) & MASK32,
        seed & MASK32, (seed >> 32) & MASK32,
    )
    word = torch.stack(words).gather(0, (col & 3).expand(rows, cols).unsqueeze(0)).squeeze(0)
    keep = word < math.floor(keep_prob * 2.0**32)
    return keep.to(dtype) * (1.0 / math.sqrt(keep_prob))


# ---------------------------------------------------------------- hidden block (docs/method.md#the-network)

def batch_norm_train(u: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Modified BN with batch statistics: returns (output, mean, std = sqrt(var_biased + eps))."""
    mean = u.mean(0)
    std = torch.sqrt(u.var(0, unbiased=False) + eps)
    return gamma * (u - mean) / std + beta, mean, std


def hidden_block(z: Tensor, gamma: Tensor, beta: Tensor, rng_state: Tensor, p: float, leak: float,
                 eps: float, act_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode hidden block, same signature as torch.ops.twoway_fast.hidden_block."""
    u = F.leaky_relu(z, leak) if act_first else z
    out, mean, std = batch_norm_train(u, gamma, beta, eps)
    if not act_first:
        out = F.leaky_relu(out, leak)
    mask = dropout_mask(rng_state, z.shape[0], z.shape[1], p, z.dtype)
    return (out if mask is None else out * mask), mean, std


def hidden_block_with_stats(z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, std: Tensor, rng_state: Tensor,
                            p: float, leak: float, act_first: bool) -> Tensor:
    """Training-mode hidden block with given BN statistics, same signature as
    torch.ops.twoway_fast.hidden_block_with_stats."""
    u = F.leaky_relu(z, leak) if act_first else z
    out = gamma * (u - mean) / std + beta
    if not act_first:
        out = F.leaky_relu(out, leak)
    mask = dropout_mask(rng_state, z.shape[0], z.shape[1], p, z.dtype)
    return out if mask is None else out * mask


def hidden_block_eval(z: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor, running_std: Tensor,
                      leak: float, act_first: bool) -> Tensor:
    """Eval-mode hidden block: running mean and std, no dropout."""
    u = F.leaky_relu(z, leak) if act_first else z
    out = gamma * (u - running_mean) / running_std + beta
    return out if act_first else F.leaky_relu(out, leak)


# ---------------------------------------------------------------- tied layers

def full_weight(weight: Tensor) -> Tensor:
    """The dense (out, in) matrix of a layer; a locally dense layer's (M, out/M, in/M) blocks become
    the block-diagonal matrix they stand for."""
    return weight if weight.dim() == 2 else torch.block_diag(*weight.unbind(0))


def tied_linear(a: Tensor, weight: Tensor, bias: Tensor, transposed: bool) -> Tensor:
    """X channel: a W^T + b. Y channel (transposed=True): the same matrix transposed, a W + b."""
    w = full_weight(weight)
    return a @ (w if transposed else w.T) + bias


# ---------------------------------------------------------------- the network

def _channel(net, a: Tensor, channel: str, states: Tensor | None, stop_at: int | None = None):
    """Runs one channel. X visits hidden positions 0..n-1 with W_1..W_n, Y visits n-1..0 with
    W_{n+1}^T..W_2^T; both end with the remaining matrix (W_{n+1} for X, W_1^T for Y).

    Returns (output, {position: (out, pre_dropout)}, {position: (batch mean, batch std)}).
    With stop_at, returns the hidden output at that position instead of running to the end.
    """
    n = len(net.hidden)
    positions = range(n) if channel == "x" else range(n - 1, -1, -1)
    bns, biases = (net.bn_x, net.x_bias) if channel == "x" else (net.bn_y, net.y_bias)
    taken, stats = {}, {}
    for k in positions:
        weight = net.weights[k] if channel == "x" else net.weights[k + 1]
        z = tied_linear(a, weight, biases[k], transposed=channel == "y")
        bn = bns[k]
        if states is None:
            a = pre = hidden_block_eval(z, bn.gamma, bn.beta, bn.running_mean, bn.running_std, net.leaks[k],
                                        net.act_first)
        else:
            pre, mean, std = hidden_block(z, bn.gamma, bn.beta, states[k], 0.0, net.leaks[k], net.bn_eps, net.act_first)
            mask = dropout_mask(states[k], z.shape[0], z.shape[1], net.dropout[k], z.dtype)
            a = pre if mask is None else pre * mask
            stats[k] = (mean, std)
        if k == net.repr_layer:
            taken[k] = (a, pre)
            if stop_at == k:
                return a, taken, stats
    out_weight = net.weights[n] if channel == "x" else net.weights[0]
    return tied_linear(a, out_weight, biases[n], transposed=channel == "y"), taken, stats


def forward(net, x: Tensor, y: Tensor, seed: Tensor | None, first_row: int = 0):
    """Both channels of a 2-Way Net. seed=None means eval mode (running statistics, no dropout).

    `net` supplies the parameters (a twoway_fast.TwoWayNet); first_row is the global index of the
    batch's first row (its dropout masks are those rows' masks).
    Returns (TwoWayOutput, batch statistics {("x" or "y", position): (mean, std)}).
    """
    states = None if seed is None else rng_states(seed, len(net.hidden), first_row)
    y_hat, taken_x, stats_x = _channel(net, x, "x", states)
    x_hat, taken_y, stats_y = _channel(net, y, "y", states)
    r = net.repr_layer
    out = TwoWayOutput(x_hat, y_hat, taken_x[r][0], taken_y[r][0], taken_x[r][1], taken_y[r][1])
    stats = {("x", k): v for k, v in stats_x.items()} | {("y", k): v for k, v in stats_y.items()}
    return out, stats


def encode(net, a: Tensor, channel: str) -> Tensor:
    """Eval-mode representation of one view at the representation position."""
    return _channel(net, a, channel, None, stop_at=net.repr_layer)[0]


# ---------------------------------------------------------------- the loss (docs/method.md#the-loss)

def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).sum(1).mean()


def midway(hx: Tensor, hy: Tensor, form: str = "sum") -> Tensor:
    """The mid-way term: squared_distance ("sum", the original), or log_midway of d_i, the mean over the rows
    of (hx - hy)^2 in dimension i ("log": sum_i log(d_i + MIDWAY_LOG_EPS))."""
    check_midway(form)
    return log_midway((hx - hy).pow(2).mean(0)) if form == "log" else squared_distance(hx, hy)


def standardised(h: Tensor, form: str, eps: float) -> Tensor:
    """The decorrelation's input: h ("second_moment"), or its columns centred and scaled to unit variance
    with eps ("correlation")."""
    if form == "correlation":
        centred = h - h.mean(0)
        return centred / torch.sqrt(centred.pow(2).mean(0) + eps)
    if form != "second_moment":
        check_loss_variant(form, "after_dropout")
    return h


def decorrelation(h: Tensor, form: str = "second_moment", eps: float = 1e-5, other: Tensor | None = None) -> Tensor:
    """||C||_F - ||diag(C)||_2 with C the uncentred second moment h^T h / B ("second_moment") or the
    batch correlation matrix ("correlation": columns centred, scaled to unit variance with eps). With
    `other`, the cross-view form: C = h^T other / B of the two views, the same way."""
    a = standardised(h, form, eps)
    b = a if other is None else standardised(other, form, eps)
    c = a.T @ b / h.shape[0]
    return torch.linalg.matrix_norm(c) - torch.linalg.vector_norm(torch.diagonal(c))


def uniformity(h: Tensor) -> Tensor:
    """log mean_{i != j} exp(2 t (u_i . u_j - 1)) over the pairs of rows, u_i row i of h centred over its columns
    and scaled to unit norm (the points correlation similarity compares): for unit rows exp(-t ||u_i - u_j||^2),
    Wang and Isola's (2020) uniformity, t = 2; a constant row's u is 0. 0 for one row (no pair)."""
    rows = h.shape[0]
    if rows < 2:
        return h.sum() * 0
    u = F.normalize(h - h.mean(1, keepdim=True), dim=1, eps=UNIFORMITY_EPS)
    pairs = ~torch.eye(rows, dtype=torch.bool, device=h.device)
    return torch.log(torch.exp(2 * UNIFORMITY_TEMPERATURE * (u @ u.T - 1))[pairs].mean())


def loss(out: TwoWayOutput, x: Tensor, y: Tensor, weights: Sequence[Tensor], gammas: Sequence[Tensor], *,
         midway_form: str = "sum", decorrelation_form: str = "second_moment",
         decorrelation_input: str = "after_dropout", decorrelation_eps: float = 1e-5,
         **coefficients: float) -> LossTerms:
    """The 2-Way loss. `weights` are the shared W_i (each counted once), `gammas` every BN gamma of
    both channels; coefficients lx, ly, lh, lc, wd, lg, lxy, lu, by default the original's (faithful) ones (lh,
    lc of the mnist preset; lxy and lu 0: twoway_fast.loss_terms.COEFFICIENTS)."""
    hx, hy = decorrelation_inputs(out, decorrelation_form, decorrelation_input)
    return with_total(dict(
        recon_x=squared_distance(x, out.x_hat),
        recon_y=squared_distance(y, out.y_hat),
        midway=midway(out.hx, out.hy, midway_form),
        decorr_x=decorrelation(hx, decorrelation_form, decorrelation_eps),
        decorr_y=decorrelation(hy, decorrelation_form, decorrelation_eps),
        weight_decay=sum(w.pow(2).sum() for w in weights) + sum(g.pow(2).sum() for g in gammas),
        gamma_penalty=sum(g.pow(-2).sum() for g in gammas),
        decorr_xy=decorrelation(hx, decorrelation_form, decorrelation_eps, other=hy),
        uniform_x=uniformity(hx),
        uniform_y=uniformity(hy),
    ), coefficients)
