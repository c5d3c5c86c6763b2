"""The types the model, the backends, the loss and the training steps share: what a forward gives, what
the loss gives (LossTerms, defined with the terms in loss_terms.py) and the parameters as the ops take
them. Types only, no computation (the oracle, twoway_fast/reference.py, computes them in plain PyTorch)."""
# No `from __future__ import annotations`: the fields' types stay objects for the API reference.
from typing import NamedTuple

from torch import Tensor

from .loss_terms import LossTerms  # noqa: F401 (its home is the loss's description)


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
