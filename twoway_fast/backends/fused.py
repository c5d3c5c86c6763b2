"""The fused backend: TwoWayNet's training forward and TwoWayLoss on the network and loss ops of
twoway_fast._C (twoway_fast/ops.py), with the same signatures and results as reference.forward and
reference.loss. Importing it requires the compiled extension.

Autocast (the ops have no autocast kernels, so the casts are here): under torch.autocast on CUDA the
network op runs in the autocast dtype (its GEMMs are where half precision pays; the kernels
accumulate in float32) and the loss op in float32, as autocast treats losses and norms. The CPU
kernels take float32 and float64 only, so under CPU autocast both run in their inputs' dtype."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import ops
from ..dropout import rng_states
from ..loss_terms import LossTerms, coefficient_list
from ..loss_variants import decorrelation_inputs, loss_options
from ..types import TwoWayOutput


def _cuda_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype torch.autocast asks for on this CUDA device; None outside autocast or off CUDA."""
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return None
    return torch.get_autocast_dtype("cuda")


def _cast(tensors: Sequence[Tensor], dtype: torch.dtype | None) -> list[Tensor]:
    return [t if dtype is None else t.to(dtype) for t in tensors]


def forward(net, x: Tensor, y: Tensor, seed: Tensor, first_row: int = 0):
    """Training-mode forward of both channels in one op; returns (TwoWayOutput, batch statistics
    {("x" or "y", position): (mean, std)}) like reference.forward."""
    n = len(net.hidden)
    p = net.op_parameters()
    low = _cuda_autocast_dtype(x.device)
    x_hat, y_hat, hx, hy, hx_pre, hy_pre, _, mean, std = ops.twoway_net(
        *_cast([x, y], low), _cast(p.weights, low), _cast(p.bias, low), _cast(p.gamma, low), _cast(p.beta, low),
        rng_states(seed, n, first_row), net.dropout, net.repr_layer, net.leaks, net.bn_eps, net.act_first)
    return TwoWayOutput(x_hat, y_hat, hx, hy, hx_pre, hy_pre), batch_stats(net, mean, std)


def batch_stats(net, mean: Sequence[Tensor], std: Sequence[Tensor]) -> dict:
    """The network op's per-slot statistics (X's positions, then Y's) as reference.forward gives them:
    {("x" or "y", position): (mean, std)}, the mean as slot_means gives it."""
    n = len(net.hidden)
    slots = [("x", k) for k in range(n)] + [("y", k) for k in range(n)]
    return dict(zip(slots, zip(slot_means(net, mean), std)))


def slot_means(net, mean: Sequence[Tensor], bias: Sequence[Tensor] | None = None) -> list[Tensor]:
    """The network ops' batch means (X's positions, then Y's) as the running means take them: with the
    bias that the ops skip in bn_then_act order, where batch norm cancels it. `bias`: the biases the op
    ran with, in op order (net.op_parameters().bias, the default); a step that updates them passes a
    copy taken before."""
    if net.act_first:
        return list(mean)
    n = len(net.hidden)
    bias = net.op_parameters().bias if bias is None else bias
    return [m + bias[slot if slot < n else slot + 1].detach() for slot, m in enumerate(mean)]


def loss(out: TwoWayOutput, x: Tensor, y: Tensor, weights: Sequence[Tensor], gammas: Sequence[Tensor], *,
         midway_form: str = "sum", decorrelation_form: str = "second_moment",
         decorrelation_input: str = "after_dropout", decorrelation_eps: float = 1e-5,
         **coefficients: float) -> LossTerms:
    """The 2-Way loss in one op, same arguments and result as reference.loss."""
    options = loss_options(midway_form, decorrelation_form, decorrelation_input)
    hx_dec, hy_dec = decorrelation_inputs(out, decorrelation_form, decorrelation_input)
    full = torch.float32 if _cuda_autocast_dtype(x.device) is not None else None
    terms, _, _ = ops.twoway_loss(*_cast([x, y, out.x_hat, out.y_hat, out.hx, out.hy, hx_dec, hy_dec], full),
                                  _cast(weights, full), _cast(gammas, full), coefficient_list(coefficients), options,
                                  decorrelation_eps)
    return LossTerms(*terms.unbind(0))
