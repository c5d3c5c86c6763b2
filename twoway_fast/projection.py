"""The CCA projection of a trained model's representations: linear CCA fitted on the training split's
representations, applied to any representation of the same model. It scores retrieval on canonical
directions (uncorrelated within each view, ordered by how well the views agree) instead of the raw
dimensions; deep CCA needs it outright (its raw outputs are not aligned dimension by dimension).
A run folder keeps the projection of its best checkpoint in projection.npz."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import metrics

FILE = "projection.npz"
FIELDS = ("mean_x", "wx", "mean_y", "wy", "correlations")


@dataclass(frozen=True)
class Projection:
    """(z - mean) @ w per view; `correlations` are the training canonical correlations, largest first."""
    mean_x: np.ndarray
    wx: np.ndarray
    mean_y: np.ndarray
    wy: np.ndarray
    correlations: np.ndarray

    @classmethod
    def fit(cls, zx: Tensor, zy: Tensor) -> "Projection":
        """Linear CCA on paired training representations, every canonical direction kept."""
        return cls(*metrics.linear_cca(zx, zy))

    @property
    def width(self) -> int:
        return self.wx.shape[0]

    def x(self, zx: Tensor) -> Tensor:
        return self._apply(zx, self.mean_x, self.wx, "x")

    def y(self, zy: Tensor) -> Tensor:
        return self._apply(zy, self.mean_y, self.wy, "y")

    @staticmethod
    def _apply(z: Tensor, mean: np.ndarray, w: np.ndarray, view: str) -> Tensor:
        if z.dim() != 2 or z.shape[1] != w.shape[0]:
            raise ValueError(f"the projection takes {view} representations of width {w.shape[0]}, "
                             f"got shape {tuple(z.shape)}")
        projected = (z.detach().cpu().double().numpy() - mean) @ w
        return torch.from_numpy(projected).to(device=z.device, dtype=z.dtype)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in FIELDS})
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "Projection":
        """Reads a projection.npz (plain arrays only: nothing in the file is run)."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = [name for name in FIELDS if name not in arrays.files]
                if missing:
                    raise ValueError(f"{path}: not a projection file (no {', '.join(missing)})")
                fields = [np.asarray(arrays[name], np.float64) for name in FIELDS]
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path}: cannot read the CCA projection ({err})") from err
        projection = cls(*fields)
        k = projection.correlations.shape[0]
        if (projection.wx.ndim != 2 or projection.wy.ndim != 2 or projection.wx.shape[1] != k
                or projection.wy.shape[1] != k or projection.mean_x.shape != (projection.wx.shape[0],)
                or projection.mean_y.shape != (projection.wy.shape[0],)):
            raise ValueError(f"{path}: the projection's arrays do not fit together")
        return projection
