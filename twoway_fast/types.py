"""The result types the model, the backends, the loss and the training steps share: what a forward
gives and what the loss gives. Types only, no computation (the oracle, twoway_fast/reference.py,
computes them in plain PyTorch)."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class TwoWayOutput(NamedTuple):
    x_hat: Tensor  # y -> x reconstruction (Y channel output)
    y_hat: Tensor  # x -> y reconstruction (X channel output)
    hx: Tensor  # X channel at the representation position, after the tied dropout
    hy: Tensor  # Y channel at the representation position, after the tied dropout
    hx_pre: Tensor  # the same before the dropout (the decorrelation's "before_dropout" input)
    hy_pre: Tensor


class LossTerms(NamedTuple):
    """The weighted total and every term unweighted."""
    total: Tensor
    recon_x: Tensor  # mean_rows sum_cols (x - x_hat)^2
    recon_y: Tensor
    midway: Tensor  # mean_rows sum_cols (hx - hy)^2
    decorr_x: Tensor  # ||Cx||_F - ||diag Cx||_2
    decorr_y: Tensor
    weight_decay: Tensor  # sum ||W_i||_F^2 + sum gamma^2
    gamma_penalty: Tensor  # sum 1 / gamma^2
