"""The synced backend: TwoWayNet's training forward and TwoWayLoss with batch statistics over the rows
of every rank of a process group (TwoWayNet.stats_group, set by the trainer under torch.distributed), on
the fused ops or the reference. The batch norms, the decorrelation covariance and the log mid-way term's
per-dimension distances see the rows of every rank: their sums are all-reduced by a differentiable
all-reduce whose backward all-reduces the incoming gradient (as torch.distributed.nn.functional's, now
deprecated, did); the uniformity term's pairs of rows see every rank's rows through a differentiable
all-gather. So N ranks of B rows compute the gradient of one batch of N*B rows (tests/test_distributed.py).
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .._extension import has_kernel
from ..distributed import count_collective
from ..dropout import rng_states
from ..loss_variants import decorrelation_inputs, log_midway
from ..loss_terms import MATRIX_TERMS, PAIR_TERMS, LossTerms, with_terms, without
from ..types import TwoWayOutput
from . import reference


# ---------------------------------------------------------------- statistics over every rank's rows

class _AllReduce(torch.autograd.Function):
    """Sum over the ranks of a group; backward sums the incoming gradients the same way. Written out:
    torch.distributed.nn.functional.all_reduce is deprecated, and its successor in
    torch.distributed._functional_collectives made the synced mnist step slower here (one A/B on gloo,
    1 rank, minimum of 6 x 20 steps: 20.9 ms against 17.1 ms with this class)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        return _sum_over_ranks(t, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _sum_over_ranks(grad, ctx.group), None


def _sum_over_ranks(t: Tensor, group) -> Tensor:
    t = t.contiguous().clone()
    count_collective(t)
    dist.all_reduce(t, group=group)
    return t


def _all_reduce(t: Tensor, group) -> Tensor:
    """Differentiable sum over the ranks of `group`."""
    return _AllReduce.apply(t, group)


class _AllGather(torch.autograd.Function):
    """Every rank's rows of a group, in rank order; backward sums the incoming gradients over the ranks (each
    rank's loss takes every row) and keeps this rank's rows, as _AllReduce's backward does for sums."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        t = t.contiguous()
        count_collective(t)
        dist.all_gather(parts, t, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return _sum_over_ranks(grad, ctx.group)[rank * rows:(rank + 1) * rows], None


def global_rows(rows: int, group) -> int:
    return rows * dist.get_world_size(group)  # shards are equal (Ranks.local_rows)


def column_stats(us: list[Tensor], shifts: list[Tensor], eps: float, group) -> list[tuple[Tensor, Tensor]]:
    """Batch mean and std = sqrt(var_biased + eps) of the columns of each u over every rank's rows,
    differentiable, in one all-reduce (each all-reduce waits for every rank, so the calls are kept few).
    The sums and sums of squares are of u - shift in float64, with a shift the same on every rank (the
    running mean), so they do not cancel when the mean dwarfs the spread."""
    n = global_rows(us[0].shape[0], group)
    ds = [u.double() - shift for u, shift in zip(us, shifts)]
    sums = _all_reduce(torch.cat([s for d in ds for s in (d.sum(0), (d * d).sum(0))]), group)
    stats = []
    for u, shift, part in zip(us, shifts, sums.split([2 * u.shape[1] for u in us])):
        m1, m2 = (part / n).chunk(2)
        var = (m2 - m1 * m1).clamp_min(0)
        stats.append(((shift + m1).to(u.dtype), torch.sqrt(var + eps).to(u.dtype)))
    return stats


def _hidden_layer(net, channel: str, k: int):
    """(weight, bias, batch norm, transposed) of hidden position k of a channel, as reference._channel."""
    if channel == "x":
        return net.weights[k], net.x_bias[k], net.bn_x[k], False
    return net.weights[k + 1], net.y_bias[k], net.bn_y[k], True


_warned = set()


def forward(net, x: Tensor, y: Tensor, seed: Tensor, first_row: int, backend: str, group):
    """TwoWayNet's training forward with batch statistics over every rank of `group`: the result of
    reference.forward on the union of the ranks' rows. The two channels advance together, X at hidden
    position d and Y at its mirror n-1-d, so one all-reduce serves both. The fused network op takes its
    statistics inside, so the fused backend runs hidden_block_with_stats between torch GEMMs here."""
    fused = backend == "fused" and has_kernel("hidden_block_with_stats", x.device.type)
    if backend == "fused" and not fused and x.device.type not in _warned:
        _warned.add(x.device.type)
        warnings.warn(f"twoway_fast: synchronised statistics on {x.device.type} run the reference hidden block "
                      "(no hidden_block_with_stats kernel for it in this build)", stacklevel=3)
    if fused:
        from .. import ops

        block = ops.hidden_block_with_stats
    else:
        block = reference.hidden_block_with_stats
    n, r = len(net.hidden), net.repr_layer
    states = rng_states(seed, n, first_row)
    a, taken, stats = {"x": x, "y": y}, {}, {}
    for depth in range(n):
        at = {"x": depth, "y": n - 1 - depth}
        layers = {c: _hidden_layer(net, c, k) for c, k in at.items()}
        z = {c: reference.tied_linear(a[c], w, b, transposed=t) for c, (w, b, _, t) in layers.items()}
        u = {c: F.leaky_relu(z[c], net.leaks[at[c]]) if net.act_first else z[c] for c in z}
        shifts = [layers[c][2].running_mean.detach().double() for c in "xy"]
        for c, (mean, std) in zip("xy", column_stats([u["x"], u["y"]], shifts, net.bn_eps, group)):
            k, bn, p = at[c], layers[c][2], net.dropout[at[c]]
            a[c] = block(z[c], bn.gamma, bn.beta, mean, std, states[k], p, net.leaks[k], net.act_first)
            if k == r:  # the representation, after and before its dropout
                taken[c] = (a[c], block(z[c], bn.gamma, bn.beta, mean, std, states[k], 0.0, net.leaks[k],
                                        net.act_first) if p else a[c])
            stats[(c, k)] = (mean, std)
    y_hat = reference.tied_linear(a["x"], net.weights[n], net.x_bias[n], transposed=False)
    x_hat = reference.tied_linear(a["y"], net.weights[0], net.y_bias[n], transposed=True)
    return TwoWayOutput(x_hat, y_hat, taken["x"][0], taken["y"][0], taken["x"][1], taken["y"][1]), stats


def global_terms(out: TwoWayOutput, form: str, where: str, eps: float, midway_form: str, group) -> dict[str, Tensor]:
    """The terms that are no means of per-row terms, over every rank's rows in one all-reduce and one
    all-gather (each waits for every rank): each of loss_terms.MATRIX_TERMS from its global C = a^T b over N*B rows of the
    decorrelation inputs (for the correlation form, columns centred and scaled by their global statistics),
    each of loss_terms.PAIR_TERMS from every rank's rows of its channel's decorrelation input (one
    all-gather) and, in the log form, reference.midway from the global column sums of (hx - hy)^2."""
    hx, hy = decorrelation_inputs(out, form, where)
    every_row = dict(zip("xy", _AllGather.apply(torch.cat([hx, hy], 1), group).split(hx.shape[1], 1)))
    terms = {name: reference.uniformity(every_row[c]) for name, c in PAIR_TERMS.items()}
    if form == "correlation":
        zero = hx.new_zeros((), dtype=torch.float64)
        (mx, sx), (my, sy) = column_stats([hx, hy], [zero, zero], eps, group)
        hx, hy = (hx - mx) / sx, (hy - my) / sy
    h, k = {"x": hx, "y": hy}, hx.shape[1]
    parts = [h[a].T @ h[b] for a, b in MATRIX_TERMS.values()]
    if midway_form == "log":
        parts.append((out.hx - out.hy).pow(2).sum(0))
    sums = _all_reduce(torch.cat([p.reshape(-1) for p in parts]), group) / global_rows(hx.shape[0], group)
    for i, name in enumerate(MATRIX_TERMS):
        c = sums[i * k * k:(i + 1) * k * k].view(k, k)
        terms[name] = torch.linalg.matrix_norm(c) - torch.linalg.vector_norm(torch.diagonal(c))
    if midway_form == "log":
        terms["midway"] = log_midway(sums[len(MATRIX_TERMS) * k * k:])
    return terms


def loss(backend_loss, out: TwoWayOutput, x: Tensor, y: Tensor, weights, gammas, *, midway_form: str,
         decorrelation_form: str, decorrelation_input: str, decorrelation_eps: float, group,
         **coefficients: float) -> LossTerms:
    """This rank's share of the 2-Way loss under synchronised statistics: the per-row terms over its own
    rows (their gradients, averaged over ranks, are those of the mean over all rows) and the parameter
    terms from the backend's loss, the global_terms in place of its own (weighted 0 there); each rank's
    total is the one-batch loss when the per-row terms of the ranks are averaged."""
    computed = global_terms(out, decorrelation_form, decorrelation_input, decorrelation_eps, midway_form, group)
    local = backend_loss(out, x, y, weights, gammas, midway_form=midway_form, decorrelation_form=decorrelation_form,
                         decorrelation_input=decorrelation_input, decorrelation_eps=decorrelation_eps,
                         **without(coefficients, computed))
    return with_terms(local, computed, coefficients)
