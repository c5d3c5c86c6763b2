"""Preprocessing of the views (docs/method.md#data), fitted on the training split only: row scaling or
standardisation, then PCA. scikit-learn fits it; what it fitted is kept as plain arrays (ViewPreprocessing)
and applied by this module alone, in training, evaluation and on new rows of a trained model, so a run
folder can store it (preprocessing.npz, read without unpickling anything) and give the same rows again."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.preprocessing import Normalizer, StandardScaler

from ..config import PREPROCESS, DataConfig
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


@dataclass(frozen=True, eq=False)
class ViewPreprocessing:
    """One view's fitted preprocessing: `kind` (data.preprocess: none, l2_rows, standardize; standardize
    uses `mean` and `scale`), then, where `components` is set, (rows - pca_mean) @ components.T.
    `width` is the raw width it takes."""
    kind: str
    width: int
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    pca_mean: np.ndarray | None = None
    components: np.ndarray | None = None

    @property
    def out_width(self) -> int:
        return self.width if self.components is None else self.components.shape[0]

    def describe(self) -> str:
        steps = [] if self.kind == "none" else [self.kind]
        if self.components is not None:
            steps.append(f"PCA to {self.out_width}")
        return ", ".join(steps) or "none"

    def transform(self, a) -> np.ndarray:
        """Raw rows (rows, width) -> the rows the model takes, float32."""
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != self.width:
            raise ValueError(f"expected rows of width {self.width}, got shape {a.shape}")
        if self.kind == "l2_rows":
            a = RowNormalizer().transform(np.asarray(a, np.float32))
        elif self.kind == "standardize":
            a = (np.asarray(a, np.float64) - self.mean) / self.scale
        if self.components is not None:
            a = (np.asarray(a, np.float64) - self.pca_mean) @ self.components.T
        return np.asarray(a, np.float32)

    def inverse_transform(self, z) -> np.ndarray:
        """Rows as the model gives them back in this view (a reconstruction) -> the raw view's space:
        the PCA and the standardisation undone. l2_rows cannot be undone (each row's scale is gone):
        its rows come back at unit norm."""
        z = np.asarray(z, np.float64)
        if self.components is not None:
            z = z @ self.components + self.pca_mean
        if self.kind == "standardize":
            z = z * self.scale + self.mean
        return z

    def arrays(self, view: str) -> dict[str, np.ndarray]:
        out = {f"{view}_kind": np.array(self.kind), f"{view}_width": np.array(self.width)}
        for name in ("mean", "scale", "pca_mean", "components"):
            if getattr(self, name) is not None:
                out[f"{view}_{name}"] = getattr(self, name)
        return out

    @classmethod
    def from_arrays(cls, arrays, view: str, source: str) -> "ViewPreprocessing":
        """The view's preprocessing from `arrays` (arrays(view)'s names), its shapes checked."""
        try:
            kind, width = str(arrays[f"{view}_kind"]), int(arrays[f"{view}_width"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: not a preprocessing file (view {view}: {err})") from None
        got = {name: np.asarray(arrays[f"{view}_{name}"], np.float64) for name in ("mean", "scale", "pca_mean",
                                                                                     "components")
               if f"{view}_{name}" in arrays}
        fits = kind in PREPROCESS and width > 0 and (kind == "standardize") == ("mean" in got and "scale" in got)
        fits = fits and all(got[n].shape == (width,) for n in ("mean", "scale") if n in got)
        if "components" in got:
            c = got["components"]
            fits = fits and c.ndim == 2 and c.shape[1] == width and got.get("pca_mean", np.empty(0)).shape == (width,)
        if not fits:
            raise ValueError(f"{source}: view {view}'s preprocessing arrays do not fit together "
                             f"(kind {kind!r}, width {width}, {({n: v.shape for n, v in got.items()})})")
        return cls(kind, width, got.get("mean"), got.get("scale"), got.get("pca_mean"), got.get("components"))


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """Both views' fitted preprocessing; `Preprocessing.load(RUN / "preprocessing.npz")` reads a run's."""
    x: ViewPreprocessing
    y: ViewPreprocessing

    def view(self, name: str) -> ViewPreprocessing:
        return {"x": self.x, "y": self.y}[name]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **self.x.arrays("x"), **self.y.arrays("y"))
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessing":
        """Reads a preprocessing.npz (plain arrays only: nothing in the file is run)."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                contents = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path}: cannot read the fitted preprocessing ({err})") from err
        return cls(ViewPreprocessing.from_arrays(contents, "x", str(path)),
                   ViewPreprocessing.from_arrays(contents, "y", str(path)))


def _fit_view(a: np.ndarray, config: DataConfig, large: bool) -> ViewPreprocessing:
    """sklearn fits the view (piecewise with partial_fit and IncrementalPCA when `large`, so a
    memory-mapped split never has to fit in memory); its fitted arrays are kept."""
    scaler = StandardScaler() if config.preprocess == "standardize" else None
    pca = (IncrementalPCA(config.pca) if large else PCA(config.pca, random_state=0)) if config.pca else None
    chunks = np.array_split(np.arange(a.shape[0]), max(1, -(-a.shape[0] // CHUNK))) if large else [slice(None)]
    if scaler is not None:
        for rows in chunks:
            scaler.partial_fit(np.asarray(a[rows]))
    fitted = ViewPreprocessing(config.preprocess, a.shape[1], *(
        (scaler.mean_, scaler.scale_) if scaler is not None else (None, None)))
    if pca is None:
        return fitted
    for rows in chunks:
        part = fitted.transform(a[rows])
        if large:
            pca.partial_fit(part)
        else:
            pca.fit(part)
    return ViewPreprocessing(fitted.kind, fitted.width, fitted.mean, fitted.scale,
                             np.asarray(pca.mean_, np.float64), np.asarray(pca.components_, np.float64))


def fit_preprocessing(train: RawSplit, config: DataConfig) -> Preprocessing:
    """Both views' preprocessing, fitted on the training split."""
    large = isinstance(train.x, np.memmap) or isinstance(train.y, np.memmap)
    views = []
    for name, a in (("x", train.x), ("y", train.y)):
        if config.pca > min(a.shape):
            raise ValueError(f"{train.source}: data.pca = {config.pca} exceeds view {name}'s shape {a.shape}")
        views.append(_fit_view(a, config, large))
    return Preprocessing(*views)
