"""The 2-Way loss's terms and their coefficients (docs/method.md#the-loss): the one Python description,
Python's copy of csrc/loss_terms.h (tests/test_loss_terms.py reads the header against it). The oracle,
the backends, the training steps and the plots take the terms, their order, their coefficients and the
total from here."""
# No `from __future__ import annotations`: LossTerms' field types stay objects for the API reference.
from typing import Mapping, NamedTuple

from torch import Tensor


class LossTerms(NamedTuple):
    """The weighted total and every term unweighted (docs/method.md#the-loss), in the loss ops' order."""
    total: Tensor
    """The weighted sum of the terms below: what to call backward() on."""
    recon_x: Tensor
    """mean_rows sum_cols (x - x_hat)^2."""
    recon_y: Tensor
    """mean_rows sum_cols (y - y_hat)^2."""
    midway: Tensor
    """mean_rows sum_cols (hx - hy)^2, or in the log form sum_cols log(mean_rows (hx - hy)^2 + 1e-3)."""
    decorr_x: Tensor
    """||Cx||_F - ||diag Cx||_2."""
    decorr_y: Tensor
    """||Cy||_F - ||diag Cy||_2."""
    weight_decay: Tensor
    """sum ||W_i||_F^2 + sum gamma^2."""
    gamma_penalty: Tensor
    """sum 1 / gamma^2."""
    decorr_xy: Tensor
    """||Cxy||_F - ||diag Cxy||_2, Cxy the cross-view matrix of hx and hy (the decorrelation's form and inputs)."""
    uniform_x: Tensor
    """log mean_{i != j} exp(-2 ||u_i - u_j||^2) = log mean_{i != j} exp(4 (u_i . u_j - 1)), u_i the decorrelation
    input's rows each centred and scaled to unit norm: how close the codes of different pairs crowd."""
    uniform_y: Tensor
    """The same of the Y channel's codes."""


# The coefficients in the ops' order, with their defaults (the original's, lh and lc the mnist preset's; lxy,
# the cross-view decorrelation's, and lu, the uniformity's, weigh no term of the original).
COEFFICIENTS = {"lx": 1.0, "ly": 1.0, "lh": 0.5, "lc": 0.05, "wd": 0.05, "lg": 0.05, "lxy": 0.0, "lu": 0.0}
# The coefficient each term enters the total with, in term order.
COEFFICIENT_OF = {"recon_x": "lx", "recon_y": "ly", "midway": "lh", "decorr_x": "lc", "decorr_y": "lc",
                  "weight_decay": "wd", "gamma_penalty": "lg", "decorr_xy": "lxy",
                  "uniform_x": "lu", "uniform_y": "lu"}
# The terms ||C||_F - ||diag C||_2 of a matrix C = a^T b / rows of the decorrelation inputs, with the
# channels of a and b: the synced backend sums each C over every rank's rows.
MATRIX_TERMS = {"decorr_x": ("x", "x"), "decorr_y": ("y", "y"), "decorr_xy": ("x", "y")}
# The terms of every pair of rows of one channel's decorrelation input: the synced backend gathers every
# rank's rows for them.
PAIR_TERMS = {"uniform_x": "x", "uniform_y": "y"}
# The uniformity term's temperature t in exp(-t ||u_i - u_j||^2) (Wang and Isola's t = 2), and the smallest
# norm a centred code row is divided by (a constant row's u is 0, not NaN).
UNIFORMITY_TEMPERATURE = 2.0
UNIFORMITY_EPS = 1e-12


def coefficients_of(given: Mapping[str, float]) -> dict[str, float]:
    """Every coefficient, the defaults where `given` has none; an unknown name is refused."""
    unknown = set(given) - set(COEFFICIENTS)
    if unknown:
        raise TypeError(f"unknown loss coefficients {sorted(unknown)}; the coefficients are {list(COEFFICIENTS)}")
    return COEFFICIENTS | dict(given)


def coefficient_list(given: Mapping[str, float]) -> list[float]:
    """The coefficients as the ops take them (COEFFICIENTS' order), the defaults where `given` has none."""
    return list(coefficients_of(given).values())


def with_total(terms: Mapping[str, Tensor], given: Mapping[str, float]) -> LossTerms:
    """LossTerms from every term but the total, which is summed here as the kernels sum it: each term
    times its coefficient, in term order."""
    c = coefficients_of(given)
    total = 0.0
    for name, coefficient in COEFFICIENT_OF.items():
        total = total + c[coefficient] * terms[name]
    return LossTerms(total, **{name: terms[name] for name in COEFFICIENT_OF})


def without(given: Mapping[str, float], names) -> dict[str, float]:
    """Every coefficient, those of the terms `names` at 0: a total of the other terms (with_terms adds
    them back)."""
    zeroed = {COEFFICIENT_OF[name] for name in names}
    shared = {n for n, c in COEFFICIENT_OF.items() if c in zeroed} - set(names)
    if shared:
        raise ValueError(f"the coefficients of {sorted(names)} also weigh {sorted(shared)}")
    return {name: 0.0 if name in zeroed else value for name, value in coefficients_of(given).items()}


def with_terms(terms: LossTerms, computed: Mapping[str, Tensor], given: Mapping[str, float]) -> LossTerms:
    """`terms` (their total taken with without(given, computed)) with the terms of `computed` in their place,
    each added to the total times its coefficient, in term order."""
    c = coefficients_of(given)
    total = terms.total
    for name in COEFFICIENT_OF:
        if name in computed:
            total = total + c[COEFFICIENT_OF[name]] * computed[name]
    return terms._replace(total=total, **computed)
