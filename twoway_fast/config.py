"""The [train] and [data] tables of a preset as checked dataclasses: configuration only, so the presets,
the trainer and the data loaders all import it and none of them imports another for it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .config_types import check_value, hints_of

SPLITS = ("train", "val", "test")  # the splits every data set has
LOWER_IS_BETTER = {"loss": True, "total_correlation": False, "r1": False}  # train.select choices
LR_SCHEDULES = ("multistep", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")  # train.precision: the dtype of the network's matrix products
PREPROCESS = ("none", "l2_rows", "standardize")


@dataclass(frozen=True)
class TrainConfig:
    """The [train] table of a preset."""
    epochs: int = 80
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov, the original's) or any torch.optim class name, e.g. "Adam"
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "multistep"  # "multistep" (lr_milestones, lr_gamma) or "cosine" (to 0 at the last epoch)
    lr_milestones: list[int] = field(default_factory=lambda: [20, 40, 60, 80])
    lr_gamma: float = 0.5
    shuffle: bool = True
    seed: int = 0
    select: str = "loss"  # best epoch by validation "loss" (lowest), "total_correlation" or "r1" (highest)
    sync_stats: bool = True  # several processes: BN and decorrelation statistics over all their rows
    cuda_graph: bool = False  # replay each step as a captured CUDA graph (twoway_fast.step.graph); CUDA only
    # "bf16": the network's products in bfloat16 (the fused CPU step; docs/guide.md); "auto": bf16 where
    # that step runs on a CPU that multiplies bfloat16 in hardware, fp32 elsewhere
    precision: str = "fp32"

    def __post_init__(self):
        _check_types(self, "train")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"train.epochs must be >= 1 and train.batch_size >= 2, got {self.epochs} and "
                             f"{self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr must be a positive finite number, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.select not in LOWER_IS_BETTER:
            raise ValueError(f"train.select must be one of {sorted(LOWER_IS_BETTER)}, got {self.select!r}")


@dataclass(frozen=True)
class DataConfig:
    """The [data] table of a preset."""
    preprocess: str = "none"  # "none", "l2_rows" (each row scaled to unit norm), "standardize"
    pca: int = 0  # > 0: project each view on its first `pca` principal components (after preprocess)
    group_size: int = 1  # rows per item: 5 for the image-sentence sets (one image row per caption)
    val_fraction: float = 0.1  # of the training items, when the source has no validation split
    test_fraction: float = 0.2  # of all items, when the source has no test split
    split_seed: int = 0
    mmap: str | bool = "auto"  # memory-map .npy files: True, False, or "auto" (when larger than half the RAM)

    def __post_init__(self):
        _check_types(self, "data")
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"data.preprocess must be one of {PREPROCESS}, got {self.preprocess!r}")
        if self.pca < 0 or self.group_size < 1:
            raise ValueError(f"data.pca must be >= 0 and data.group_size >= 1, got {self.pca} and {self.group_size}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError(f"data.val_fraction and data.test_fraction must be in (0, 1), got "
                             f"{self.val_fraction} and {self.test_fraction}")
        if self.mmap not in ("auto", True, False):
            raise ValueError(f"data.mmap must be true, false or \"auto\", got {self.mmap!r}")


def _check_types(config, section: str) -> None:
    hints = hints_of(type(config))
    for f in fields(config):
        check_value(f"{section}.{f.name}", getattr(config, f.name), hints[f.name], type(config).__name__)
