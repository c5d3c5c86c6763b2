"""The variants of the 2-Way loss's decorrelation term (docs/method.md#loss-variants): its form and which
representations it sees, checked once and shared by the oracle, the backends and the training steps."""
from __future__ import annotations

from torch import Tensor

from .types import TwoWayOutput

DECORRELATION_FORMS = ("second_moment", "correlation")
DECORRELATION_INPUTS = ("after_dropout", "before_dropout")


def check_loss_variant(form: str, where: str) -> None:
    if form not in DECORRELATION_FORMS:
        raise ValueError(f"decorrelation must be one of {DECORRELATION_FORMS} (the decorrelation form), got {form!r}")
    if where not in DECORRELATION_INPUTS:
        raise ValueError(f"decorrelation_input must be one of {DECORRELATION_INPUTS}, got {where!r}")


def decorrelation_inputs(out: TwoWayOutput, form: str, where: str) -> tuple[Tensor, Tensor]:
    """The representations the decorrelation term sees (after or before the tied dropout)."""
    check_loss_variant(form, where)
    return (out.hx, out.hy) if where == "after_dropout" else (out.hx_pre, out.hy_pre)
