"""A data set as loaded, before splitting and preprocessing: one split's numpy arrays
(possibly memory-mapped) and the checks every loaded pair of views passes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 65536  # rows per step when a set is processed piecewise (memory-mapped fitting, encoding)


@dataclass
class RawSplit:
    """One split as loaded: numpy arrays (possibly memory-mapped), rows paired, groups consecutive."""
    x: np.ndarray
    y: np.ndarray
    source: str  # what to name in error messages


@dataclass
class RawData:
    name: str
    splits: dict[str, RawSplit]
    half_shape: tuple[int, int] | None = None  # image halves: (rows, cols) of one half, column-major


def check_view(a: np.ndarray, name: str, source: str) -> None:
    """One view: a non-empty 2-D array of real numbers, all finite."""
    _check_form(a, name, source)
    _check_finite(a, name, source)


def check_pair(x: np.ndarray, y: np.ndarray, source: str) -> None:
    for name, a in (("x", x), ("y", y)):
        _check_form(a, name, source)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{source}: x has {x.shape[0]} rows but y has {y.shape[0]}; rows must be pairs")
    for name, a in (("x", x), ("y", y)):
        _check_finite(a, name, source)


def _check_form(a: np.ndarray, name: str, source: str) -> None:
    if a.ndim != 2:
        raise ValueError(f"{source}: view {name} must be a 2-D array (rows, features), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{source}: view {name} has non-numeric dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):  # would lose its imaginary part to a float cast
        raise ValueError(f"{source}: view {name} is complex ({a.dtype}); give real features")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{source}: view {name} is empty, shape {a.shape}")


def _check_finite(a: np.ndarray, name: str, source: str) -> None:
    for start in range(0, a.shape[0], CHUNK):  # piecewise: memory-mapped arrays stay on disk
        bad = ~np.isfinite(a[start:start + CHUNK])
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise ValueError(f"{source}: view {name} holds NaN or Inf (first at row {row})")
