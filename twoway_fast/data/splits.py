"""Train/val/test splits of a loaded data set (docs/method.md#data): the source's own, or cut from its items
(groups of rows) with a fixed seed."""
from __future__ import annotations

import numpy as np

from ..config import SPLITS, DataConfig
from .raw import CHUNK, RawData, RawSplit, check_pair


def _check_groups(split: RawSplit, group_size: int) -> None:
    n = split.x.shape[0]
    if n % group_size:
        raise ValueError(f"{split.source}: {n} rows do not divide into groups of {group_size} (data.group_size)")
    if group_size == 1:
        return
    for start in range(0, n, CHUNK - CHUNK % group_size):
        block = np.asarray(split.x[start:start + CHUNK - CHUNK % group_size])
        grouped = block.reshape(-1, group_size, block.shape[1])
        differs = (grouped != grouped[:, :1]).any(axis=(1, 2))
        if differs.any():
            row = start + int(np.argmax(differs)) * group_size
            raise ValueError(f"{split.source}: x rows {row}..{row + group_size - 1} are not one item repeated "
                             f"{group_size} times (data.group_size = {group_size})")


def split_items(raw: RawSplit, config: DataConfig, fraction: float) -> tuple[RawSplit, RawSplit]:
    """A random `fraction` of the items (groups of rows) and the rest, with the fixed config.split_seed;
    rows keep their order within each part."""
    g = config.group_size
    items = raw.x.shape[0] // g
    order = np.random.default_rng(config.split_seed).permutation(items)
    cut = int(round(fraction * items))
    parts = []
    for name, chosen in (("held out", order[:cut]), ("kept", order[cut:])):
        rows = (np.sort(chosen)[:, None] * g + np.arange(g)).ravel()
        if len(rows) < 2:
            raise ValueError(f"{raw.source}: too few rows ({raw.x.shape[0]}) to split off {fraction:.0%}")
        parts.append(RawSplit(np.asarray(raw.x[rows]), np.asarray(raw.y[rows]), f"{raw.source} ({name} part)"))
    return parts[0], parts[1]


def standard_splits(raw: RawData, config: DataConfig) -> dict[str, RawSplit]:
    """train/val/test: those the source has; a missing test split and a missing validation split are
    cut from the items (validation from the training items, docs/method.md#data: 10%, fixed seed)."""
    splits = dict(raw.splits)
    for s in splits.values():
        check_pair(s.x, s.y, s.source)
        _check_groups(s, config.group_size)
    if "all" in splits:
        splits["test"], splits["train"] = split_items(splits.pop("all"), config, config.test_fraction)
    if "val" not in splits:
        splits["val"], splits["train"] = split_items(splits["train"], config, config.val_fraction)
    widths = {s: (v.x.shape[1], v.y.shape[1]) for s, v in splits.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"{raw.name}: the splits have different widths (dx, dy): {widths}")
    return {s: splits[s] for s in SPLITS}

