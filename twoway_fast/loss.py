"""TwoWayLoss: the 2-Way loss (docs/method.md#the-loss) as a module bound to its model's weights and gammas."""
from __future__ import annotations

from torch import Tensor, nn

from .backends import resolve_backend
from .loss_terms import LossTerms, coefficients_of
from .loss_variants import check_loss_variant
from .types import TwoWayOutput

RECONSTRUCTIONS = ("sum", "mean")


class TwoWayLoss(nn.Module):
    """criterion(out, x, y) -> LossTerms: the weighted total and each term unweighted
    (twoway_fast.loss_terms.LossTerms).

    coefficients: each term's weight by name: twoway_fast.loss_terms.COEFFICIENTS (the names, in the ops'
    order, and their defaults) and COEFFICIENT_OF (the terms each one weighs). Defaults are the
    original's (faithful) settings with the mnist preset's lh and lc; the presets (twoway_fast.presets)
    carry tuned ones that keep the representation from collapsing.

    reconstruction: "sum" (the original: squared error summed over a row's elements) or "mean" (over
    its elements: lx and ly are divided by the view widths, so a reconstruction weighs the same
    whatever the width, instead of outweighing the mid-way and decorrelation terms by the width).
    `coefficients` holds the weights as the kernels apply them (lx, ly already divided for "mean").

    midway: "sum" (the original: ||hx - hy||^2 summed over the k dimensions, averaged over the rows) or
    "log" (sum_i log(d_i + 1e-3), d_i the mean over the rows of (hx - hy)_i^2: the best-matched dimensions
    pushed further, close to maximising the mutual information of Gaussian codes). Meant for fixed-scale
    codes (model repr_affine=False): with a learned gamma at the representation the log form can also be
    lowered by shrinking gamma, which only the gamma penalty resists.
    """

    def __init__(self, model, *, decorrelation: str = "second_moment", decorrelation_input: str = "after_dropout",
                 decorrelation_eps: float = 1e-5, reconstruction: str = "sum", midway: str = "sum",
                 **coefficients: float):
        super().__init__()
        check_loss_variant(decorrelation, decorrelation_input, midway)
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        self.model = [model]  # a plain list: the loss must not re-register the model's parameters
        self.reconstruction, self.midway = reconstruction, midway
        self.coefficients = coefficients_of(coefficients)
        if reconstruction == "mean":
            self.coefficients["lx"] /= model.dx
            self.coefficients["ly"] /= model.dy
        self.decorrelation, self.decorrelation_input = decorrelation, decorrelation_input
        self.decorrelation_eps = decorrelation_eps

    def forward(self, out: TwoWayOutput, x: Tensor, y: Tensor) -> LossTerms:
        model = self.model[0]
        backend_loss = resolve_backend(model.backend, x.device).loss
        variant = dict(midway_form=self.midway, decorrelation_form=self.decorrelation,
                       decorrelation_input=self.decorrelation_input, decorrelation_eps=self.decorrelation_eps)
        if model.training and model.stats_group is not None:  # decorrelation, log mid-way over every rank's rows
            from .backends import synced

            return synced.loss(backend_loss, out, x, y, list(model.weights), model.gammas(), **self.coefficients,
                                    **variant, group=model.stats_group)
        return backend_loss(out, x, y, list(model.weights), model.gammas(), **self.coefficients, **variant)

    def extra_repr(self) -> str:
        return (", ".join(f"{k}={v}" for k, v in self.coefficients.items())
                + f", reconstruction={self.reconstruction!r}, midway={self.midway!r}"
                + f", decorrelation={self.decorrelation!r}, decorrelation_input={self.decorrelation_input!r}")
