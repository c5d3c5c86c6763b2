"""TwoWayEstimator: a 2-Way Net behind scikit-learn's estimator interface (numpy in and out), so it
works in a Pipeline, in GridSearchCV and with clone(). The second view is sklearn's `y` (so
fit(X, Y) reads as usual); like sklearn's CCA, transform(X) gives X's representation and
transform(X, Y) both, and predict(X) gives Y-hat."""
from __future__ import annotations

import copy
import numbers
import sys

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import metrics, presets
from .callbacks import EpochLines
from .config import DataConfig, TrainConfig
from .data import RawSplit, fit_preprocessing
from .data.dataset import prepared_split
from .data.splits import split_items
from .evaluation import encode
from .projection import Projection
from .train import Trainer, build

FLOATS = (np.float64, np.float32)  # kept as given; anything else becomes float64, as in scikit-learn


class KeepBest:
    """A Trainer callback holding a copy of the model's state at its best validation epoch."""

    def __init__(self, model):
        self.model, self.state, self.epoch = model, None, None

    def on_epoch(self, row: dict) -> None:
        if row["best"]:
            self.state, self.epoch = copy.deepcopy(self.model.state_dict()), row["epoch"]


class TwoWayEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Fits a 2-Way Net linking the rows of X to the rows of Y.

    Against sklearn.cross_decomposition.CCA, whose interface it follows: `n_components`, `fit(X, Y)`,
    `transform(X)` / `transform(X, Y)`, `predict(X)` -> Y-hat and `get_feature_names_out` mean the same.
    The differences: the reverse prediction is `predict_x(Y)` -> X-hat (the network's other channel;
    there is no `inverse_transform`: a 2-Way Net decodes a view from the other view, not from the
    shared representation); `score` is the CCA protocol, not the R^2 of `predict` (see score);
    `transform` and `predict` keep the input's float dtype.

    Args:
        preset: a packaged preset name (or a preset .toml file) giving every value not set below,
            its [data] preprocessing included (applied to both views inside the estimator: fitted on
            the training rows, then to every row given to transform, predict and score).
        faithful: the preset's faithful form (the original's settings).
        n_components: the representation width, with the architecture around it (the preset's
            hidden widths, or `hidden`) kept: the width at the representation position is replaced.
            None: that of the preset or of `hidden`.
        hidden: hidden widths; None = the preset's.
        repr_layer, dropout, bn_eps: model values; None = the preset's.
        lh, lc, lu: mid-way, decorrelation and uniformity weights; None = the preset's. The mnist
            preset's (lh 2, lc 6, lu 12) are tuned for a 50-d code on 54000 rows; for a code of a few
            dimensions a lower lc keeps the decorrelation from swamping it (4 dimensions: lc 3 did
            better than 6, and 6 better than 12). On small data the mnist preset held from a few
            thousand rows up; on about a thousand rows of a few columns, preset="digits" did a little
            better at a small share of the time (docs/guide.md#the-scikit-learn-estimator).
        epochs: 20 by default (None: the preset's, 20 for mnist).
        batch_size, lr, optimizer: training values; None = the preset's. The batch size is capped at
            the number of training rows.
        precision: the dtype of the network's products in training, "fp32", "bf16" or "auto" (bf16 on
            a CPU that multiplies bfloat16 in hardware, else fp32); None = the preset's (mnist: "auto").
            log_ records what each epoch ran in.
        preprocess: "none", "standardize" or "l2_rows", applied to each view; None = the preset's
            (mnist: "none", for pixels in [0, 1]). "standardize" makes the fit independent of each
            column's scale and offset, which "none" is not (docs/method.md#data).
        validation_fraction: the share of the rows held out (by the preset's data.split_seed) to pick
            the best epoch by the preset's train.select, as the command line does; the model returned
            is that epoch's. 0 or None, or too few rows to hold out 2: no validation, the last epoch.
        device: torch device for training and transform.
        random_state: seed of the initialisation, batch order and dropout: an int, None (a fresh seed
            each fit) or a numpy RandomState / Generator to draw one from.
        verbose: print one line per epoch (training loss; validation loss, correlation and R@1).

    Attributes after fit: model_ (the TwoWayNet, eval mode, with the fitted preprocessing attached:
    model_.encode_x takes raw rows), n_components_, n_features_in_, n_features_y_, best_epoch_, log_
    (the per-epoch metrics, as metrics.jsonl holds them), projection_ (the CCA projection of the
    training rows' representations, which score uses).
    """

    def __init__(self, preset="mnist", faithful=False, n_components=None, hidden=None, repr_layer=None, dropout=None,
                 bn_eps=None, lh=None, lc=None, lu=None, epochs=20, batch_size=None, lr=None, optimizer=None,
                 precision=None, preprocess=None, validation_fraction=0.1, device="cpu", random_state=0,
                 verbose=False):
        self.preset = preset
        self.faithful = faithful
        self.n_components = n_components
        self.hidden = hidden
        self.repr_layer = repr_layer
        self.dropout = dropout
        self.bn_eps = bn_eps
        self.lh = lh
        self.lc = lc
        self.lu = lu
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.precision = precision
        self.preprocess = preprocess
        self.validation_fraction = validation_fraction
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

    def _preset(self, seed: int) -> presets.Preset:
        """The preset with the estimator's parameters laid over it (those not None)."""
        base = presets.resolve(self.preset, self.faithful)
        chosen = {
            "model": {"hidden": self.hidden, "repr_layer": self.repr_layer, "dropout": self.dropout,
                      "bn_eps": self.bn_eps},
            "loss": {"lh": self.lh, "lc": self.lc, "lu": self.lu},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                      "optimizer": self.optimizer, "precision": self.precision, "seed": seed},
            "data": {"preprocess": self.preprocess},
        }
        table = {s: {k: v for k, v in values.items() if v is not None} for s, values in chosen.items()}
        model = base.model | table["model"]
        hidden = list(model["hidden"])
        if self.n_components is not None:
            if not isinstance(self.n_components, numbers.Integral) or self.n_components < 1:
                raise ValueError(f"n_components must be a positive int, got {self.n_components!r}")
            at = len(hidden) // 2 if model.get("repr_layer") is None else model["repr_layer"]
            if not 0 <= at < len(hidden):
                raise ValueError(f"repr_layer must be a hidden position in 0..{len(hidden) - 1}, got {at}")
            hidden[at] = int(self.n_components)
        table["model"]["hidden"] = hidden
        return base.merged(table, "TwoWayEstimator parameters")

    def _views(self, X, y, reset: bool):
        X = validate_data(self, X, reset=reset, dtype=FLOATS)
        return X, (None if y is None else self._view_y(y, X.shape[0], reset))

    def _view_y(self, y, rows: int | None, reset: bool) -> np.ndarray:
        y = check_array(y, dtype=FLOATS, ensure_2d=False)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if rows is not None and y.shape[0] != rows:
            raise ValueError(f"X and y must have the same number of rows (pairs), got {rows} and {y.shape[0]}")
        if reset:
            self.n_features_y_ = y.shape[1]
        elif y.shape[1] != self.n_features_y_:
            raise ValueError(f"y has {y.shape[1]} features, but {type(self).__name__} was fitted with "
                             f"{self.n_features_y_}")
        return y

    def _held_out(self, pairs: RawSplit, data: DataConfig) -> tuple[RawSplit, RawSplit | None]:
        """(training rows, validation rows or None)."""
        if pairs.x.shape[0] % data.group_size:
            raise ValueError(f"the preset groups rows by {data.group_size} (data.group_size: one item's rows in a "
                             f"row), but fit got {pairs.x.shape[0]} rows")
        n = pairs.x.shape[0] // data.group_size
        fraction = self.validation_fraction or 0.0
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if round(fraction * n) < 2 or n - round(fraction * n) < 2:
            return pairs, None
        val, train = split_items(pairs, data, fraction)
        return train, val

    def fit(self, X, y):
        """Trains on the pairs (X[i], y[i]) (y, the second view, may be 1-D: one feature), picking the
        best epoch on the held-out validation rows."""
        if y is None:  # wording that sklearn's checks recognise
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None "
                             "(y is the paired view: fit(X, Y))")
        X, Y = self._views(X, y, reset=True)
        if X.shape[0] < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 rows for its batch statistics, got "
                             f"n_samples={X.shape[0]}")
        seed = self._seed()
        preset = self._preset(seed)
        data = DataConfig(**preset.data)
        train_rows, val_rows = self._held_out(RawSplit(X, Y, "the rows given to fit"), data)
        rows = train_rows.x.shape[0]
        if TrainConfig(**preset.train).batch_size > rows:  # one batch of every training row
            preset = preset.merged({"train": {"batch_size": rows}}, "TwoWayEstimator")
        fitted = fit_preprocessing(train_rows, data)
        device = torch.device(self.device)
        train = prepared_split(train_rows, fitted, data.group_size, device)
        val = None if val_rows is None else prepared_split(val_rows, fitted, data.group_size, device)
        model, criterion = build(preset, fitted.x.out_width, fitted.y.out_width, seed, device)
        best = KeepBest(model)
        loggers = [best] + ([EpochLines(sys.stdout)] if self.verbose else [])
        trainer = Trainer(model, criterion, train, val, TrainConfig(**preset.train), None, progress=False,
                          callbacks=loggers)
        self.log_ = trainer.fit()
        if best.state is not None:  # else no finite validation value: the last epoch
            model.load_state_dict(best.state)
        self.best_epoch_ = best.epoch or len(self.log_)
        self.model_ = model.eval()
        self.projection_ = Projection.fit(*encode(model, train))
        model.preprocessing = fitted  # from here on the model takes raw rows
        self.n_components_ = self._n_features_out = model.hidden[model.repr_layer]
        return self

    def _out(self, t: torch.Tensor, like: np.ndarray) -> np.ndarray:
        return t.detach().cpu().numpy().astype(like.dtype, copy=False)

    def _inference_model(self):
        """The fitted model in float64: a row's output then does not depend on the rows passed with it
        (float32 matrix products round differently by batch shape)."""
        return copy.deepcopy(self.model_).double()

    @torch.no_grad()
    def transform(self, X, y=None):
        """The representation of X, or (X's, y's) when y is given: (rows, n_components_) arrays of the
        input's float dtype (float32 and float64 kept, others as float64)."""
        check_is_fitted(self, "model_")
        X, Y = self._views(X, y, reset=False)
        model = self._inference_model()
        zx = self._out(model.encode_x(X), X)
        return zx if Y is None else (zx, self._out(model.encode_y(Y), Y))

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y).transform(X, y)

    @torch.no_grad()
    def predict(self, X):
        """Y-hat: the X -> Y channel's output for the rows of X, in Y's own space (the fitted
        preprocessing undone where it can be: a PCA and a standardisation are, the row scale that
        l2_rows removes is not), (rows, n_features_y_), of X's float dtype."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=FLOATS)
        return self._out(self._inference_model().predict_y(X), X)

    @torch.no_grad()
    def predict_x(self, Y):
        """X-hat: the Y -> X channel's output for the rows of Y (predict the other way), (rows,
        n_features_in_), of Y's float dtype."""
        check_is_fitted(self, "model_")
        Y = self._view_y(Y, None, reset=False)
        return self._out(self._inference_model().predict_x(Y), Y)

    def score(self, X, y):
        """The CCA protocol on (X, y) (docs/method.md#evaluation): both views' representations projected
        on the canonical directions fitted on the training rows' representations (projection_), and the
        paired correlations of those n_components_ directions summed on the rows given. Higher is better.

        Why this figure: the paired total correlation (dimension i of X's code against dimension i of
        Y's) rewards collapse, every dimension carrying the same few directions scoring near the maximum,
        and GridSearchCV then picks the collapsed model. Projected on canonical directions, a collapsed
        code has only its few directions to offer and scores low. R@1 would judge collapse too, but
        depends on how many rows are scored (a fold of 200 is easier than one of 2000) and moves in
        steps on small folds; the CCA protocol is a smooth sum on the same scale as linear CCA's."""
        zx, zy = self.transform(X, y)
        projection = self.projection_
        return metrics.total_correlation(projection.x(torch.from_numpy(zx)), projection.y(torch.from_numpy(zy)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # y, the second view
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
