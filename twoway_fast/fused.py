"""The fused backend: TwoWayNet's training forward and TwoWayLoss on the network and loss ops of
twoway_fast._C (twoway_fast/ops.py), with the same signatures and results as reference.forward and
reference.loss. Importing it requires the compiled extension."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from . import ops
from .reference import LossTerms, TwoWayOutput, decorrelation_inputs, rng_states


def forward(net, x: Tensor, y: Tensor, seed: Tensor, first_row: int = 0):
    """Training-mode forward of both channels in one op; returns (TwoWayOutput, batch statistics
    {("x" or "y", position): (mean, std)}) like reference.forward."""
    n = len(net.hidden)
    bias = [*net.x_bias, *net.y_bias]
    bns = [*net.bn_x, *net.bn_y]
    x_hat, y_hat, hx, hy, hx_pre, hy_pre, _, mean, std = ops.twoway_net(
        x, y, list(net.weights), bias, [bn.gamma for bn in bns], [bn.beta for bn in bns],
        rng_states(seed, n, first_row), net.dropout, net.repr_layer, net.leak, net.bn_eps, net.act_first)
    stats = {}
    for slot in range(2 * n):
        channel, k = ("x", slot) if slot < n else ("y", slot - n)
        m = mean[slot]
        if not net.act_first:  # the op skips the bias that batch norm cancels; the running mean includes it
            m = m + bias[slot if slot < n else slot + 1].detach()
        stats[(channel, k)] = (m, std[slot])
    return TwoWayOutput(x_hat, y_hat, hx, hy, hx_pre, hy_pre), stats


def loss(out: TwoWayOutput, x: Tensor, y: Tensor, weights: Sequence[Tensor], gammas: Sequence[Tensor], *,
         lx: float = 1.0, ly: float = 1.0, lh: float = 0.5, lc: float = 0.05, wd: float = 0.05, lg: float = 0.05,
         decorrelation_form: str = "second_moment", decorrelation_input: str = "after_dropout",
         decorrelation_eps: float = 1e-5) -> LossTerms:
    """The 2-Way loss in one op, same arguments and result as reference.loss."""
    hx_dec, hy_dec = decorrelation_inputs(out, decorrelation_form, decorrelation_input)
    terms, _, _ = ops.twoway_loss(x, y, out.x_hat, out.y_hat, out.hx, out.hy, hx_dec, hy_dec, list(weights),
                                  list(gammas), [lx, ly, lh, lc, wd, lg], decorrelation_form == "correlation",
                                  decorrelation_eps)
    return LossTerms(*terms.unbind(0))
