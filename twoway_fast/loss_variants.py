"""The variants of the 2-Way loss (docs/method.md#loss-variants): the mid-way term's form, the decorrelation
term's form and which representations it sees, checked once and shared by the oracle, the backends and the
training steps."""
from __future__ import annotations

import torch
from torch import Tensor

from .types import TwoWayOutput

MIDWAY_FORMS = ("sum", "log")
DECORRELATION_FORMS = ("second_moment", "correlation")
DECORRELATION_INPUTS = ("after_dropout", "before_dropout")

# The log mid-way term's eps, sum_i log(d_i + eps): it bounds the gradient 1 / (d_i + eps) of a dimension
# whose two representations match exactly (d_i = 0). The kernels' copy is kMidwayLogEps (csrc/loss_terms.h).
MIDWAY_LOG_EPS = 1e-3

# The variants as the bits of the ops' loss_options (csrc/loss_terms.h's option::).
MIDWAY_LOG, CORRELATION, BEFORE_DROPOUT = 1, 2, 4


def check_midway(midway: str) -> None:
    if midway not in MIDWAY_FORMS:
        raise ValueError(f"midway must be one of {MIDWAY_FORMS} (the mid-way term's form), got {midway!r}")


def check_loss_variant(form: str, where: str, midway: str = "sum") -> None:
    if form not in DECORRELATION_FORMS:
        raise ValueError(f"decorrelation must be one of {DECORRELATION_FORMS} (the decorrelation form), got {form!r}")
    if where not in DECORRELATION_INPUTS:
        raise ValueError(f"decorrelation_input must be one of {DECORRELATION_INPUTS}, got {where!r}")
    check_midway(midway)


def loss_options(midway: str, form: str, where: str) -> int:
    """The variants as the ops' loss_options (checked)."""
    check_loss_variant(form, where, midway)
    return ((MIDWAY_LOG if midway == "log" else 0) | (CORRELATION if form == "correlation" else 0)
            | (BEFORE_DROPOUT if where == "before_dropout" else 0))


def decorrelation_inputs(out: TwoWayOutput, form: str, where: str) -> tuple[Tensor, Tensor]:
    """The representations the decorrelation term sees (after or before the tied dropout)."""
    check_loss_variant(form, where)
    return (out.hx, out.hy) if where == "after_dropout" else (out.hx_pre, out.hy_pre)


def log_midway(d: Tensor) -> Tensor:
    """The log mid-way term sum_i log(d_i + MIDWAY_LOG_EPS) of the per-dimension mean squared distances d_i
    (over the batch's rows: one process's, or every rank's in the synced backend)."""
    return torch.log(d + MIDWAY_LOG_EPS).sum()
