"""Evaluation metrics (docs/method.md#evaluation).

Three views of one representation, because the paired figure alone rewards a collapsed representation
(every dimension carrying the same few directions scores near the maximum while retrieval is poor):
- total_correlation: the paper's figure, dimension i of one view against dimension i of the other;
- cca_correlation: the deep-CCA protocol, linear CCA fitted on the training representations, the sum of
  the top-k canonical correlations measured on test;
- effective_rank: how many directions the representation really carries.
Plus retrieval (R@K, median rank) in both directions.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .retrieval import retrieval_ranks

RECALL_AT = (1, 5, 10)
CCA_RIDGE = 1e-4  # added to each view's covariance, relative to its mean variance (singular views)


def _f64(a: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dims) array, got shape {a.shape}")
    return a


def total_correlation(a: Tensor, b: Tensor) -> float:
    """Sum over dimensions of the Pearson correlation between a[:, i] and b[:, i] (paired), float64."""
    return float(correlation_per_dimension(a, b).sum())


def correlation_per_dimension(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """Pearson correlation of a[:, i] with b[:, i] for each i (0 where a column is constant)."""
    a, b = _f64(a, "a"), _f64(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be two (n, k) matrices of one shape, got {a.shape} and {b.shape}")
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return np.divide((a * b).sum(0), denom, out=np.zeros(a.shape[1]), where=denom > 0)


def cross_correlation(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """(ka, kb) matrix of Pearson correlations between every column of a and every column of b."""
    a, b = _f64(a, "a"), _f64(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    za, zb = _standardise(a), _standardise(b)
    return za.T @ zb / a.shape[0]


def _standardise(a: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance; constant columns become 0."""
    centred = a - a.mean(0)
    std = centred.std(0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12 * max(std.max(), 1e-300))


def effective_rank(h: Tensor | np.ndarray) -> float:
    """Participation ratio (sum l)^2 / sum l^2 of the eigenvalues l of the correlation matrix of the
    columns of h: k for k uncorrelated dimensions, 1 when all carry one direction."""
    z = _standardise(_f64(h, "h"))
    eig = np.clip(np.linalg.eigvalsh(z.T @ z / z.shape[0]), 0.0, None)
    return float(eig.sum() ** 2 / (eig ** 2).sum()) if eig.any() else 0.0


def _inverse_sqrt(c: np.ndarray) -> np.ndarray:
    c = c + CCA_RIDGE * max(np.trace(c) / len(c), 1e-12) * np.eye(len(c))
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(w)) @ v.T


def linear_cca(a: Tensor | np.ndarray, b: Tensor | np.ndarray, k: int | None = None):
    """Linear CCA in closed form (whitening and an SVD; exact, unlike an iterative fit).

    Returns (mean_a, wa, mean_b, wb, correlations): projections (a - mean_a) @ wa and (b - mean_b) @ wb
    have the k training canonical correlations, largest first. Each covariance gets a ridge of
    CCA_RIDGE times its mean variance, so constant or collinear columns (blank pixels, a collapsed
    representation) are allowed.
    """
    a, b = _f64(a, "a"), _f64(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CCA needs paired rows, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 2:
        raise ValueError("CCA needs at least 2 rows")
    k = min(a.shape[1], b.shape[1]) if k is None else int(k)
    if not 1 <= k <= min(a.shape[1], b.shape[1]):
        raise ValueError(f"k must be in 1..{min(a.shape[1], b.shape[1])}, got {k}")
    mean_a, mean_b = a.mean(0), b.mean(0)
    a, b = a - mean_a, b - mean_b
    n = a.shape[0] - 1
    ia, ib = _inverse_sqrt(a.T @ a / n), _inverse_sqrt(b.T @ b / n)
    u, s, vt = np.linalg.svd(ia @ (a.T @ b / n) @ ib)
    return mean_a, ia @ u[:, :k], mean_b, ib @ vt[:k].T, s[:k]


def cca_correlation(train_a, train_b, test_a, test_b, k: int | None = None) -> float:
    """The CCA protocol: linear CCA fitted on the training pairs, the sum of the top-k canonical
    correlations measured on the test pairs (k defaults to the smaller width)."""
    mean_a, wa, mean_b, wb, _ = linear_cca(train_a, train_b, k)
    test_a, test_b = _f64(test_a, "test_a"), _f64(test_b, "test_b")
    if test_a.shape[1] != wa.shape[0] or test_b.shape[1] != wb.shape[0]:
        raise ValueError(f"test widths {test_a.shape[1]}, {test_b.shape[1]} differ from the training widths "
                         f"{wa.shape[0]}, {wb.shape[0]}")
    return total_correlation((test_a - mean_a) @ wa, (test_b - mean_b) @ wb)


def recall_summary(ranks: Tensor) -> dict[str, float]:
    """R@1, R@5, R@10 (percent of queries with rank <= K, ranks from 1) and the median rank."""
    ranks = ranks.detach().cpu().double()
    out = {f"r{k}": float((ranks <= k).double().mean() * 100) for k in RECALL_AT}
    out["medr"] = float(np.median(ranks.numpy()))
    return out


def retrieval(zx: Tensor, zy: Tensor, group: Tensor | None = None) -> dict[str, dict[str, float]]:
    """Both directions under correlation similarity. zx: one row per item (images, de-duplicated),
    zy: one row per pair (sentences); group[j] = the item of zy row j (None: row j pairs with row j).
    x2y: each item queries the zy rows (image annotation); y2x: each zy row queries the items."""
    x2y, y2x = retrieval_ranks(zx, zy, group)
    return {"x2y": recall_summary(x2y), "y2x": recall_summary(y2x)}
