"""The types the model, the backends, the loss and the training steps share: what a forward gives, what
the loss gives and the parameters as the ops take them. Types only, no computation (the oracle, twoway_fast/reference.py,
computes them in plain PyTorch)."""
# No `from __future__ import annotations`: the fields' types stay objects for the API reference.
from typing import NamedTuple

from torch import Tensor


class TwoWayOutput(NamedTuple):
    """What a forward gives: both reconstructions and the representations of both channels."""
    x_hat: Tensor
    """y -> x reconstruction (the Y channel's output)."""
    y_hat: Tensor
    """x -> y reconstruction (the X channel's output)."""
    hx: Tensor
    """The X channel at the representation position, after the tied dropout."""
    hy: Tensor
    """The Y channel at the representation position, after the tied dropout."""
    hx_pre: Tensor
    """hx before the dropout (the decorrelation's "before_dropout" input)."""
    hy_pre: Tensor
    """hy before the dropout."""


class LossTerms(NamedTuple):
    """The weighted total and every term unweighted (docs/method.md#the-loss)."""
    total: Tensor
    """The weighted sum of the terms below: what to call backward() on."""
    recon_x: Tensor
    """mean_rows sum_cols (x - x_hat)^2."""
    recon_y: Tensor
    """mean_rows sum_cols (y - y_hat)^2."""
    midway: Tensor
    """mean_rows sum_cols (hx - hy)^2."""
    decorr_x: Tensor
    """||Cx||_F - ||diag Cx||_2."""
    decorr_y: Tensor
    """||Cy||_F - ||diag Cy||_2."""
    weight_decay: Tensor
    """sum ||W_i||_F^2 + sum gamma^2."""
    gamma_penalty: Tensor
    """sum 1 / gamma^2."""


class OpParameters(NamedTuple):
    """The network's parameters as the network and step ops take them (TwoWayNet.op_parameters)."""
    weights: list[Tensor]
    """W_1..W_{n+1}."""
    bias: list[Tensor]
    """Per slot: X's hidden positions, then its output layer's, then Y's likewise."""
    gamma: list[Tensor]
    """The batch norms' gammas, per slot: X's hidden positions, then Y's."""
    beta: list[Tensor]
    """The batch norms' betas, in gamma's order."""
