"""Preprocessing of the views (docs/method.md#data), fitted on the training split only: row scaling or
standardisation, then PCA, as one scikit-learn pipeline per view."""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

from ..config import DataConfig
from .raw import CHUNK, RawSplit


class RowNormalizer(Normalizer):
    """sklearn's Normalizer (l2) on rows first scaled by a power of two that brings their largest
    magnitude into [0.5, 1): exact, so the same result, but the squares no longer overflow (float32
    rows past ~1e19 became zeros)."""

    def transform(self, X, copy=None):
        X = np.asarray(X)
        if np.issubdtype(X.dtype, np.floating):
            with np.errstate(invalid="ignore"):  # a NaN/Inf row keeps exponent 0: left as it is
                _, exponent = np.frexp(np.abs(X).max(axis=1, initial=0))
            X = np.ldexp(X, -exponent[:, None]).astype(X.dtype, copy=False)
        return super().transform(X, copy=False)


def _view_pipeline(config: DataConfig, large: bool) -> Pipeline:
    steps = {"none": [], "l2_rows": [RowNormalizer()], "standardize": [StandardScaler()]}[config.preprocess]
    if config.pca:
        steps.append(IncrementalPCA(config.pca) if large else PCA(config.pca, random_state=0))
    return make_pipeline(*steps) if steps else make_pipeline(FunctionTransformer())


def fit_preprocessing(train: RawSplit, config: DataConfig) -> tuple[Pipeline, Pipeline]:
    """One sklearn pipeline per view, fitted on the training split. A memory-mapped split is fitted
    piecewise (partial_fit, IncrementalPCA) so it never has to fit in memory."""
    large = isinstance(train.x, np.memmap) or isinstance(train.y, np.memmap)
    fitted = []
    for name, a in (("x", train.x), ("y", train.y)):
        if config.pca > min(a.shape):
            raise ValueError(f"{train.source}: data.pca = {config.pca} exceeds view {name}'s shape {a.shape}")
        pipe = _view_pipeline(config, large)
        if not large:
            pipe.fit(a)
        else:
            chunks = np.array_split(np.arange(a.shape[0]), max(1, -(-a.shape[0] // CHUNK)))
            for i, (_, step) in enumerate(pipe.steps):
                before = pipe[:i]
                for rows in chunks:
                    part = before.transform(np.asarray(a[rows])) if i else np.asarray(a[rows])
                    if hasattr(step, "partial_fit"):
                        step.partial_fit(part)
                    else:  # stateless steps (RowNormalizer, FunctionTransformer)
                        step.fit(part)
                        break
        fitted.append(pipe)
    return fitted[0], fitted[1]

