"""The data set ready for training: splits whose tensors live on the training device, the batches
as index slices of them, and `load`, which takes a source through reading, splitting and preprocessing."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import SPLITS, DataConfig
from .preprocessing import Preprocessing, fit_preprocessing
from .raw import CHUNK, RawSplit
from .sources import load_raw
from .splits import standard_splits


@dataclass
class Split:
    """One split ready for training: x, y as float32 tensors on the device (or, memory-mapped, numpy
    arrays transformed batch by batch); group[i] = the item of row i, consecutive (None: one row each)."""
    x: Tensor | np.ndarray
    y: Tensor | np.ndarray
    group: Tensor | None
    device: torch.device
    transforms: Preprocessing | None = None  # only for memory-mapped splits

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The rows `index` (int64) of both views, on the device."""
        if self.transforms is None:
            return self.x[index], self.y[index]
        rows = index.cpu().numpy()
        views = []
        for a, view in zip((self.x, self.y), (self.transforms.x, self.transforms.y)):
            views.append(torch.from_numpy(view.transform(a[rows])).to(self.device))
        return views[0], views[1]

    def chunks(self, size: int = CHUNK):
        """Index tensors covering the split in order (for evaluation and encoding)."""
        for start in range(0, len(self), size):
            yield torch.arange(start, min(len(self), start + size), device=self.device)

    def item_rows(self) -> Tensor:
        """The first row of each item (the de-duplicated images of a multi-caption set)."""
        if self.group is None:
            return torch.arange(len(self), device=self.device)
        first = torch.ones(len(self), dtype=torch.bool, device=self.device)
        first[1:] = self.group[1:] != self.group[:-1]
        return first.nonzero().squeeze(1)


def batches(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device):
    """Index tensors of full batches (the incomplete last batch is dropped, docs/method.md#training); shuffled
    with `generator` (a CPU generator, so runs are reproducible across devices), in order when None."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    dx: int
    dy: int
    half_shape: tuple[int, int] | None = None
    config: DataConfig = field(default_factory=DataConfig)
    preprocessing: Preprocessing | None = None  # fitted on train; what a trained model applies to new rows

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def prepared_split(raw: RawSplit, transforms: Preprocessing, group_size: int, device: torch.device,
                   keep_mapped: bool = False) -> Split:
    """`raw` through the fitted preprocessing, on `device` (memory-mapped: kept on disk, transformed
    batch by batch)."""
    n = raw.x.shape[0]
    group = None if group_size == 1 else torch.arange(n, device=device) // group_size
    if keep_mapped:
        return Split(raw.x, raw.y, group, device, transforms)
    views = []
    for a, view in zip((raw.x, raw.y), (transforms.x, transforms.y)):
        parts = [view.transform(a[s:s + CHUNK]) for s in range(0, n, CHUNK)]
        views.append(torch.from_numpy(np.concatenate(parts)).to(device))
    return Split(views[0], views[1], group, device)


def load(source: str | Path, config: DataConfig = DataConfig(), device: str | torch.device = "cpu",
         preprocessing: Preprocessing | None = None) -> Dataset:
    """Loads, splits, fits the preprocessing on train (or applies `preprocessing`, a trained run's) and
    puts every split on `device`."""
    device = torch.device(device)
    raw = load_raw(source, config)
    splits = standard_splits(raw, config)
    transforms = fit_preprocessing(splits["train"], config) if preprocessing is None else preprocessing
    widths = (splits["train"].x.shape[1], splits["train"].y.shape[1])
    if (transforms.x.width, transforms.y.width) != widths:
        raise ValueError(f"{source}: view widths {widths} do not match the model this preprocessing was fitted "
                         f"for, which takes ({transforms.x.width}, {transforms.y.width})")
    mapped = any(isinstance(a, np.memmap) for s in splits.values() for a in (s.x, s.y))
    ready = {s: prepared_split(r, transforms, config.group_size, device, mapped) for s, r in splits.items()}
    dx, dy = transforms.x.out_width, transforms.y.out_width
    return Dataset(raw.name, ready["train"], ready["val"], ready["test"], dx, dy, raw.half_shape, config, transforms)
