"""Data sets of paired views (SPEC section 4): loading, train/val/test splits, preprocessing fitted on the
training split only, and batches as index slices of tensors that live on the training device.

Sources (`load(source)`):
- "digits": scikit-learn's 8x8 digits, left 4 columns = x, right 4 = y (embedded, no download);
- a directory of MNIST-format IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]);
- a directory in the original's cache layout (train_x.npy, train_y.npy, validate_x.npy, ... test_y.npy);
- a directory holding x.npy and y.npy, or an .npz file with arrays x and y (split here with a fixed
  seed) or with the six cache-layout arrays.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from torch import Tensor

from .idx import read_idx

SPLITS = ("train", "val", "test")
CACHE_NAMES = {"train": "train", "val": "validate", "test": "test"}  # the original's file names
MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
PREPROCESS = ("none", "l2_rows", "standardize")
CHUNK = 65536  # rows per step when a set is processed piecewise (memory-mapped fitting, encoding)
# What numpy raises on a truncated or damaged .npy/.npz (an empty file: EOFError; a cut zip: BadZipFile).
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


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
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"data.preprocess must be one of {PREPROCESS}, got {self.preprocess!r}")
        if self.pca < 0 or self.group_size < 1:
            raise ValueError(f"data.pca must be >= 0 and data.group_size >= 1, got {self.pca} and {self.group_size}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError(f"data.val_fraction and data.test_fraction must be in (0, 1), got "
                             f"{self.val_fraction} and {self.test_fraction}")
        if self.mmap not in ("auto", True, False):
            raise ValueError(f"data.mmap must be true, false or \"auto\", got {self.mmap!r}")


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


# ---------------------------------------------------------------- sources

def _check_pair(x: np.ndarray, y: np.ndarray, source: str) -> None:
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ValueError(f"{source}: view {name} must be a 2-D array (rows, features), got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{source}: view {name} has non-numeric dtype {a.dtype}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{source}: view {name} is empty, shape {a.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{source}: x has {x.shape[0]} rows but y has {y.shape[0]}; rows must be pairs")
    for name, a in (("x", x), ("y", y)):
        for start in range(0, a.shape[0], CHUNK):  # piecewise: memory-mapped arrays stay on disk
            bad = ~np.isfinite(a[start:start + CHUNK])
            if bad.any():
                row = start + int(np.argwhere(bad)[0][0])
                raise ValueError(f"{source}: view {name} holds NaN or Inf (first at row {row})")


def image_halves(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w) images -> (left, right), each flattened column-major (SPEC section 4)."""
    if images.ndim != 3 or images.shape[2] % 2:
        raise ValueError(f"images must be (n, height, even width), got shape {images.shape}")
    flat = images.transpose(0, 2, 1).reshape(len(images), -1)  # column-major per image
    half = flat.shape[1] // 2
    return flat[:, :half], flat[:, half:]


def _from_images(name: str, images: dict[str, np.ndarray], scale: float) -> RawData:
    splits = {}
    for split, (img, source) in images.items():
        x, y = image_halves(np.asarray(img, np.float32) / scale)
        splits[split] = RawSplit(x, y, source)
    shape = next(iter(images.values()))[0].shape
    return RawData(name, splits, (shape[1], shape[2] // 2))


def load_digits() -> RawData:
    from sklearn.datasets import load_digits as sk_digits

    images = sk_digits().images  # (1797, 8, 8), values 0..16
    return _from_images("digits", {"all": (images, "scikit-learn digits")}, 16.0)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / stem.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    return None


def load_mnist_dir(directory: str | Path) -> RawData:
    """MNIST-format IDX images: train-images-idx3-ubyte[.gz] (required), t10k-images-idx3-ubyte[.gz]."""
    directory = Path(directory)
    images = {}
    for split, stem in MNIST_FILES.items():
        path = _find(directory, stem)
        if path is None:
            continue
        img = read_idx(path)
        if img.ndim != 3:
            raise ValueError(f"{path}: expected images (n, height, width), got an IDX array of shape {img.shape}")
        if img.shape[2] % 2:
            raise ValueError(f"{path}: image width {img.shape[2]} is odd; halves need an even width")
        images[split] = (img, str(path))
    if "train" not in images:
        raise ValueError(f"{directory}: no {MNIST_FILES['train']}[.gz] found")
    if "test" in images and images["test"][0].shape[1:] != images["train"][0].shape[1:]:
        raise ValueError(f"{directory}: train and test images differ in size "
                         f"({images['train'][0].shape[1:]} and {images['test'][0].shape[1:]})")
    scale = 255.0 if images["train"][0].dtype == np.uint8 else 1.0
    return _from_images(directory.name or "mnist", images, scale)


def _npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except UNREADABLE as err:
        raise ValueError(f"{path}: cannot read as .npy: {type(err).__name__}: {err}") from err


def _wants_mmap(paths: list[Path], mmap: str | bool) -> bool:
    if mmap != "auto":
        return bool(mmap)
    size = sum(p.stat().st_size for p in paths)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return size > available // 2


def load_cache_dir(directory: Path, mmap: str | bool) -> RawData:
    """The original's cache layout: {train,validate,test}_{x,y}.npy."""
    paths = {s: (directory / f"{CACHE_NAMES[s]}_x.npy", directory / f"{CACHE_NAMES[s]}_y.npy") for s in SPLITS}
    missing = [p.name for pair in paths.values() for p in pair if not p.exists()]
    if missing:
        raise ValueError(f"{directory}: cache layout incomplete, missing {missing}")
    use_mmap = _wants_mmap([p for pair in paths.values() for p in pair], mmap)
    splits = {s: RawSplit(_npy(px, use_mmap), _npy(py, use_mmap), f"{px} / {py.name}") for s, (px, py) in paths.items()}
    return RawData(directory.name, splits)


def load_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except UNREADABLE as err:
        raise ValueError(f"{path}: cannot read as .npz: {type(err).__name__}: {err}") from err
    cache = {f"{CACHE_NAMES[s]}_{v}" for s in SPLITS for v in "xy"}
    if cache <= set(arrays):
        splits = {s: RawSplit(arrays[f"{CACHE_NAMES[s]}_x"], arrays[f"{CACHE_NAMES[s]}_y"], f"{path} ({s})")
                  for s in SPLITS}
    elif {"x", "y"} <= set(arrays):
        splits = {"all": RawSplit(arrays["x"], arrays["y"], str(path))}
    else:
        raise ValueError(f"{path}: expected arrays x and y, or {sorted(cache)}; found {sorted(arrays)}")
    return RawData(path.stem, splits)


def load_raw(source: str | Path, config: DataConfig = DataConfig()) -> RawData:
    """Finds the kind of source and loads it (see the module docstring)."""
    if str(source) == "digits":
        return load_digits()
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data source {str(source)!r} does not exist (use a directory, an .npz file or 'digits')")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path}: a data file must be .npz (arrays x and y); for .npy files give their directory")
        return load_npz(path)
    if _find(path, MNIST_FILES["train"]):
        return load_mnist_dir(path)
    if (path / "train_x.npy").exists():
        return load_cache_dir(path, config.mmap)
    if (path / "x.npy").exists() and (path / "y.npy").exists():
        use_mmap = _wants_mmap([path / "x.npy", path / "y.npy"], config.mmap)
        return RawData(path.name, {"all": RawSplit(_npy(path / "x.npy", use_mmap), _npy(path / "y.npy", use_mmap),
                                                   f"{path}/x.npy, y.npy")})
    raise ValueError(f"{path}: no data found: expected {MNIST_FILES['train']}[.gz], the cache layout "
                     "(train_x.npy ... test_y.npy) or x.npy and y.npy")


# ---------------------------------------------------------------- splits and groups

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


def _split_items(raw: RawSplit, config: DataConfig, fraction: float) -> tuple[RawSplit, RawSplit]:
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
    cut from the items (validation from the training items, SPEC section 4: 10%, fixed seed)."""
    splits = dict(raw.splits)
    for s in splits.values():
        _check_pair(s.x, s.y, s.source)
        _check_groups(s, config.group_size)
    if "all" in splits:
        splits["test"], splits["train"] = _split_items(splits.pop("all"), config, config.test_fraction)
    if "val" not in splits:
        splits["val"], splits["train"] = _split_items(splits["train"], config, config.val_fraction)
    widths = {s: (v.x.shape[1], v.y.shape[1]) for s, v in splits.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"{raw.name}: the splits have different widths (dx, dy): {widths}")
    return {s: splits[s] for s in SPLITS}


# ---------------------------------------------------------------- preprocessing (fitted on train only)

def _view_pipeline(config: DataConfig, large: bool) -> Pipeline:
    steps = {"none": [], "l2_rows": [Normalizer()], "standardize": [StandardScaler()]}[config.preprocess]
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
                    else:  # stateless steps (Normalizer, FunctionTransformer)
                        step.fit(part)
                        break
        fitted.append(pipe)
    return fitted[0], fitted[1]


# ---------------------------------------------------------------- device-resident splits and batches

@dataclass
class Split:
    """One split ready for training: x, y as float32 tensors on the device (or, memory-mapped, numpy
    arrays transformed batch by batch); group[i] = the item of row i, consecutive (None: one row each)."""
    x: Tensor | np.ndarray
    y: Tensor | np.ndarray
    group: Tensor | None
    device: torch.device
    transforms: tuple[Pipeline, Pipeline] | None = None  # only for memory-mapped splits

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The rows `index` (int64) of both views, on the device."""
        if self.transforms is None:
            return self.x[index], self.y[index]
        rows = index.cpu().numpy()
        views = []
        for a, pipe in zip((self.x, self.y), self.transforms):
            part = pipe.transform(np.asarray(a[rows], np.float32))
            views.append(torch.from_numpy(np.asarray(part, np.float32)).to(self.device))
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
    """Index tensors of full batches (the incomplete last batch is dropped, SPEC section 3); shuffled
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

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def _to_split(raw: RawSplit, transforms: tuple[Pipeline, Pipeline], group_size: int, device: torch.device,
              keep_mapped: bool) -> Split:
    n = raw.x.shape[0]
    group = None if group_size == 1 else torch.arange(n, device=device) // group_size
    if keep_mapped:
        return Split(raw.x, raw.y, group, device, transforms)
    views = []
    for a, pipe in zip((raw.x, raw.y), transforms):
        parts = [np.asarray(pipe.transform(np.asarray(a[s:s + CHUNK], np.float32)), np.float32)
                 for s in range(0, n, CHUNK)]
        views.append(torch.from_numpy(np.concatenate(parts)).to(device))
    return Split(views[0], views[1], group, device)


def load(source: str | Path, config: DataConfig = DataConfig(), device: str | torch.device = "cpu") -> Dataset:
    """Loads, splits, fits the preprocessing on train and puts every split on `device`."""
    device = torch.device(device)
    raw = load_raw(source, config)
    splits = standard_splits(raw, config)
    transforms = fit_preprocessing(splits["train"], config)
    mapped = any(isinstance(a, np.memmap) for s in splits.values() for a in (s.x, s.y))
    ready = {s: _to_split(r, transforms, config.group_size, device, mapped) for s, r in splits.items()}
    dx = config.pca or splits["train"].x.shape[1]
    dy = config.pca or splits["train"].y.shape[1]
    return Dataset(raw.name, ready["train"], ready["val"], ready["test"], dx, dy, raw.half_shape, config)
