"""Correlation statistics of two paired views over more rows than fit at once (docs/method.md#evaluation).

Running means and centred co-moments in float64, each chunk merged with the pairwise update of Chan,
Golub and LeVeque: no sums of squares of raw values, so no cancellation when the mean dwarfs the spread.
"""
from __future__ import annotations

import torch
from torch import Tensor


class StreamingMoments:
    """Feed chunks of paired rows (x (b, kx), y (b, ky)) with `update`; read `total_correlation()` and
    `covariance()` at any point. full=False keeps per-dimension statistics only (paired dimensions,
    kx == ky, O(k) memory); full=True keeps the covariance matrices as well (what linear CCA needs)."""

    def __init__(self, full: bool = False):
        self.full = full
        self.n = 0
        self.mean_x = self.mean_y = None
        self.sxx = self.syy = self.sxy = None  # centred co-moments: sums of products of deviations

    def _moments(self, dx: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.full:
            return dx.T @ dx, dy.T @ dy, dx.T @ dy
        return (dx * dx).sum(0), (dy * dy).sum(0), (dx * dy).sum(0)

    def update(self, x: Tensor, y: Tensor) -> StreamingMoments:
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must be (b, kx) and (b, ky) with one b, got {tuple(x.shape)} and {tuple(y.shape)}")
        if not self.full and x.shape[1] != y.shape[1]:
            raise ValueError(f"paired dimensions need kx == ky (or full=True), got {x.shape[1]} and {y.shape[1]}")
        if self.mean_x is not None and (x.shape[1], y.shape[1]) != (self.mean_x.shape[0], self.mean_y.shape[0]):
            raise ValueError(f"widths changed: earlier chunks had ({self.mean_x.shape[0]}, {self.mean_y.shape[0]}), "
                             f"got ({x.shape[1]}, {y.shape[1]})")
        b = x.shape[0]
        if b == 0:
            return self
        x, y = x.detach().double(), y.detach().double()
        mean_x, mean_y = x.mean(0), y.mean(0)
        sxx, syy, sxy = self._moments(x - mean_x, y - mean_y)
        if self.n == 0:
            self.mean_x, self.mean_y, self.sxx, self.syy, self.sxy = mean_x, mean_y, sxx, syy, sxy
        else:
            total = self.n + b
            dx, dy = (mean_x - self.mean_x).unsqueeze(0), (mean_y - self.mean_y).unsqueeze(0)
            cxx, cyy, cxy = self._moments(dx, dy)  # the correction for the two chunks' different means
            weight = self.n * b / total
            self.sxx += sxx + weight * cxx
            self.syy += syy + weight * cyy
            self.sxy += sxy + weight * cxy
            self.mean_x += dx.squeeze(0) * (b / total)
            self.mean_y += dy.squeeze(0) * (b / total)
        self.n += b
        return self

    def covariance(self) -> tuple[Tensor, Tensor, Tensor]:
        """Sample covariances (divided by n - 1), float64: (cov_xx, cov_yy, cov_xy) as matrices when
        full, else the per-dimension variances of x and y and the paired covariances."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 rows, got {self.n}")
        return self.sxx / (self.n - 1), self.syy / (self.n - 1), self.sxy / (self.n - 1)

    def total_correlation(self) -> float:
        """Sum over dimensions of the Pearson correlation of x[:, i] and y[:, i] (paired)."""
        if self.n < 2:
            raise ValueError(f"correlation needs at least 2 rows, got {self.n}")
        sxx, syy, sxy = (self.sxx.diagonal(), self.syy.diagonal(), self.sxy.diagonal()) if self.full else \
            (self.sxx, self.syy, self.sxy)
        if sxx.shape != syy.shape:
            raise ValueError(f"paired dimensions need kx == ky, got {sxx.shape[0]} and {syy.shape[0]}")
        return float((sxy / (sxx * syy).sqrt().clamp_min(torch.finfo(torch.float64).tiny)).sum())
