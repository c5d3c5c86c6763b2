"""TwoWayEstimator: a 2-Way Net behind scikit-learn's estimator interface (numpy in and out), so it
works in a Pipeline, in GridSearchCV and with clone(). The second view is sklearn's `y` (so
fit(X, Y) reads as usual); like sklearn's CCA, transform(X) gives X's representation and
transform(X, Y) both."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import metrics, presets
from .data import Split
from .config import TrainConfig
from .train import Trainer, build


class TwoWayEstimator(TransformerMixin, BaseEstimator):
    """Fits a 2-Way Net linking the rows of X to the rows of Y.

    Args:
        preset: a packaged preset name (or a preset .toml file) giving every value not set below.
        faithful: the preset's faithful form (the original's settings).
        hidden: hidden widths; None = the preset's.
        repr_layer, dropout, bn_eps: model values; None = the preset's.
        lh, lc: mid-way and decorrelation weights; None = the preset's.
        epochs: 20 by default (None: the preset's, 80 for mnist).
        batch_size, lr, optimizer: training values; None = the preset's. The batch size is capped at
            the number of rows.
        device: torch device for training and transform.
        random_state: seed of the initialisation, batch order and dropout: an int, None (a fresh seed
            each fit) or a numpy RandomState / Generator to draw one from.
        verbose: show a progress bar.

    Attributes after fit: model_ (the TwoWayNet, eval mode), n_features_in_, n_features_y_, log_ (the
    per-epoch training losses).
    """

    def __init__(self, preset="mnist", faithful=False, hidden=None, repr_layer=None, dropout=None, bn_eps=None,
                 lh=None, lc=None, epochs=20, batch_size=None, lr=None, optimizer=None, device="cpu",
                 random_state=0, verbose=False):
        self.preset = preset
        self.faithful = faithful
        self.hidden = hidden
        self.repr_layer = repr_layer
        self.dropout = dropout
        self.bn_eps = bn_eps
        self.lh = lh
        self.lc = lc
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        if isinstance(self.random_state, np.random.Generator):
            return int(self.random_state.integers(2**31 - 1))
        try:
            return int(check_random_state(self.random_state).randint(2**31 - 1))
        except ValueError as err:
            raise ValueError(f"random_state must be an int, None or a numpy RandomState or Generator, got "
                             f"{self.random_state!r}") from err

    def _preset(self, rows: int, seed: int) -> presets.Preset:
        base = presets.resolve(self.preset, self.faithful)
        chosen = {
            "model": {"hidden": self.hidden, "repr_layer": self.repr_layer, "dropout": self.dropout,
                      "bn_eps": self.bn_eps},
            "loss": {"lh": self.lh, "lc": self.lc},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                      "optimizer": self.optimizer, "seed": seed},
        }
        table = {s: {k: v for k, v in values.items() if v is not None} for s, values in chosen.items()}
        if "hidden" in table["model"]:
            table["model"]["hidden"] = list(table["model"]["hidden"])
        batch = table["train"].get("batch_size", base.train.get("batch_size", 128))
        table["train"]["batch_size"] = min(batch, rows)
        return base.merged(table, "TwoWayEstimator parameters")

    def _views(self, X, y, reset: bool):
        X = validate_data(self, X, reset=reset, dtype=np.float32)
        if y is None:
            return X, None
        y = check_array(y, dtype=np.float32, ensure_2d=False)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X and y must have the same number of rows (pairs), got {X.shape[0]} and {y.shape[0]}")
        if reset:
            self.n_features_y_ = y.shape[1]
        elif y.shape[1] != self.n_features_y_:
            raise ValueError(f"y has {y.shape[1]} features, but {type(self).__name__} was fitted with "
                             f"{self.n_features_y_}")
        return X, y

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def fit(self, X, y):
        """Trains on the pairs (X[i], y[i]); y, the second view, may be 1-D (one feature)."""
        if y is None:  # wording that sklearn's checks recognise
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None "
                             "(y is the paired view: fit(X, Y))")
        X, Y = self._views(X, y, reset=True)
        if X.shape[0] < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 rows for its batch statistics, got "
                             f"n_samples={X.shape[0]}")
        seed = self._seed()
        preset = self._preset(X.shape[0], seed)
        model, criterion = build(preset, X.shape[1], Y.shape[1], seed, self.device)
        split = Split(self._tensor(X), self._tensor(Y), None, torch.device(self.device))
        trainer = Trainer(model, criterion, split, None, TrainConfig(**preset.train), None, progress=self.verbose)
        self.log_ = trainer.fit()
        self.model_ = model.eval()
        return self

    @torch.no_grad()
    def transform(self, X, y=None):
        """The representation of X, or (X's, y's) when y is given; float32 arrays (rows, width)."""
        check_is_fitted(self, "model_")
        X, Y = self._views(X, y, reset=False)
        zx = self.model_.encode_x(self._tensor(X)).cpu().numpy()
        if Y is None:
            return zx
        return zx, self.model_.encode_y(self._tensor(Y)).cpu().numpy()

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y).transform(X, y)

    def score(self, X, y):
        """Total correlation of the two representations (sum over dimensions of the paired Pearson
        correlation, docs/method.md#evaluation): higher is better, as GridSearchCV expects."""
        zx, zy = self.transform(X, y)
        return metrics.total_correlation(zx, zy)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # y, the second view
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
