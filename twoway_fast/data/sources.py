"""Readers of the data sources (docs/method.md#data), each giving a RawData (`load_raw(source)` finds the kind):
- "digits": scikit-learn's 8x8 digits, left 4 columns = x, right 4 = y (embedded, no download);
- a directory of MNIST-format IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]);
- a directory in the original's cache layout (train_x.npy, train_y.npy, validate_x.npy, ... test_y.npy);
- a directory holding x.npy and y.npy, or an .npz file with arrays x and y (split here with a fixed
  seed) or with the six cache-layout arrays.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..config import SPLITS, DataConfig
from .idx import read_idx
from .raw import RawData, RawSplit, check_view

CACHE_NAMES = {"train": "train", "val": "validate", "test": "test"}  # the original's file names
MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
# What numpy raises on a truncated or damaged .npy/.npz (an empty file: EOFError; a cut zip: BadZipFile).
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def image_halves(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w) images -> (left, right), each flattened column-major (docs/method.md#data)."""
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
        if 0 in img.shape:
            raise ValueError(f"{path}: no images in it (IDX shape {img.shape})")
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


def check_npy_size(f, available: int, name: str) -> None:
    """Reads the .npy header at f's position and refuses a shape that needs more bytes than the
    `available` (the file's or the archive member's size): numpy would allocate it all first."""
    try:
        fmt = np.lib.format
        version = fmt.read_magic(f)  # 2.0 and 3.0 share the header layout (3.0 allows utf-8 field names)
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    except UNREADABLE:
        return  # no header to trust: numpy's own reading reports what is wrong
    need = f.tell() + math.prod(shape) * dtype.itemsize  # Python ints: a claimed shape cannot overflow
    if need > available:
        raise ValueError(f"{name}: cannot read as .npy: truncated: its header claims shape {shape} of {dtype} ({need} bytes), "
                         f"the file holds {available}")


def _npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            check_npy_size(f, os.fstat(f.fileno()).st_size, str(path))
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


def _check_npz_sizes(path: Path) -> None:
    """check_npy_size on every array of an .npz archive."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.filename.endswith(".npy"):
                with archive.open(member) as f:
                    check_npy_size(f, member.file_size, f"{path} ({member.filename})")


def load_npz(path: Path) -> RawData:
    try:
        _check_npz_sizes(path)
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


def load_view(path: str | Path, view: str) -> np.ndarray:
    """Every row of one view ("x" or "y") from one file, in order, for a trained model to encode: an .npy
    array (rows, features); an .npz holding an array named after the view, or a single array; or an IDX
    file of images (gzipped or not), of which the view's half is taken as the MNIST loader takes it (x
    the left half, y the right, flattened column-major, uint8 scaled to [0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (give an .npy, an .npz or an IDX file)")
    if path.suffix == ".npy":
        a = _npy(path, mmap=False)
    elif path.suffix == ".npz":
        a = _npz_view(path, view)
    elif "idx" in path.name:
        a = read_idx(path)
        if a.ndim == 3:
            scale = 255.0 if a.dtype == np.uint8 else 1.0
            a = image_halves(np.asarray(a, np.float32) / scale)[0 if view == "x" else 1]
    else:
        raise ValueError(f"{path}: a view file must be .npy, .npz or IDX (its name holding 'idx')")
    check_view(a, view, str(path))
    return a


def _npz_view(path: Path, view: str) -> np.ndarray:
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if view in names or len(names) == 1:
                return archive[view if view in names else names[0]]
    except UNREADABLE as err:
        raise ValueError(f"{path}: cannot read as .npz: {type(err).__name__}: {err}") from err
    raise ValueError(f"{path}: expected an array named {view!r} or a single array; found {sorted(names)}")


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

