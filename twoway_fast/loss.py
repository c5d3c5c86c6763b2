"""TwoWayLoss: the 2-Way loss (docs/method.md#the-loss) as a module bound to its model's weights and gammas."""
from __future__ import annotations

from torch import Tensor, nn

from .backends import resolve_backend
from .loss_variants import check_loss_variant
from .types import LossTerms, TwoWayOutput


class TwoWayLoss(nn.Module):
    """criterion(out, x, y) -> LossTerms(total, recon_x, recon_y, midway, decorr_x, decorr_y,
    weight_decay, gamma_penalty): the weighted total and each term unweighted.

    Defaults are the original's (faithful) settings with the mnist preset's lh and lc; the presets
    (twoway_fast.presets) carry tuned ones that keep the representation from collapsing.
    """

    def __init__(self, model, lx: float = 1.0, ly: float = 1.0, lh: float = 0.5, lc: float = 0.05,
                 wd: float = 0.05, lg: float = 0.05, decorrelation: str = "second_moment",
                 decorrelation_input: str = "after_dropout", decorrelation_eps: float = 1e-5):
        super().__init__()
        check_loss_variant(decorrelation, decorrelation_input)
        self.model = [model]  # a plain list: the loss must not re-register the model's parameters
        self.coefficients = dict(lx=lx, ly=ly, lh=lh, lc=lc, wd=wd, lg=lg)
        self.decorrelation, self.decorrelation_input = decorrelation, decorrelation_input
        self.decorrelation_eps = decorrelation_eps

    def forward(self, out: TwoWayOutput, x: Tensor, y: Tensor) -> LossTerms:
        model = self.model[0]
        backend_loss = resolve_backend(model.backend, x.device).loss
        variant = dict(decorrelation_form=self.decorrelation, decorrelation_input=self.decorrelation_input,
                       decorrelation_eps=self.decorrelation_eps)
        if model.training and model.stats_group is not None:  # decorrelation over every rank's rows
            from .backends import synced

            return synced.loss(backend_loss, out, x, y, list(model.weights), model.gammas(), **self.coefficients,
                                    **variant, group=model.stats_group)
        return backend_loss(out, x, y, list(model.weights), model.gammas(), **self.coefficients, **variant)

    def extra_repr(self) -> str:
        return (", ".join(f"{k}={v}" for k, v in self.coefficients.items())
                + f", decorrelation={self.decorrelation!r}, decorrelation_input={self.decorrelation_input!r}")
