"""Data sets of paired views (docs/method.md#data): loading, train/val/test splits, preprocessing fitted on the
training split only, and batches as index slices of tensors that live on the training device.

    raw.py            a split as loaded (numpy arrays), with its checks
    sources.py        the readers (`load_raw`): digits, MNIST IDX files (idx.py), the cache layout, .npy, .npz;
                      `load_view`: one view's rows from one file, for a trained model to encode
    splits.py         train/val/test: the source's own, or cut from its items with a fixed seed
    preprocessing.py  the per-view preprocessing, fitted on train, kept as plain arrays
    dataset.py        Split, Dataset, batches and `load`, the whole way from a source to the device

Sources (`load(source)`):
- "digits": scikit-learn's 8x8 digits, left 4 columns = x, right 4 = y (embedded, no download);
- a directory of MNIST-format IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]);
- a directory in the original's cache layout (train_x.npy, train_y.npy, validate_x.npy, ... test_y.npy);
- a directory holding x.npy and y.npy, or an .npz file with arrays x and y (split here with a fixed
  seed) or with the six cache-layout arrays.
"""
from ..config import PREPROCESS, SPLITS, DataConfig
from .dataset import Dataset, Split, batches, load
from .preprocessing import Preprocessing, ViewPreprocessing, fit_preprocessing
from .raw import CHUNK, RawData, RawSplit
from .sources import CACHE_NAMES, MNIST_FILES, UNREADABLE, image_halves, load_cache_dir, load_digits, load_mnist_dir, \
    load_npz, load_raw, load_view
from .splits import standard_splits

__all__ = ["CACHE_NAMES", "CHUNK", "MNIST_FILES", "PREPROCESS", "SPLITS", "UNREADABLE", "DataConfig", "Dataset",
           "Preprocessing", "RawData", "RawSplit", "Split", "ViewPreprocessing", "batches", "fit_preprocessing",
           "image_halves", "load", "load_cache_dir", "load_digits", "load_mnist_dir", "load_npz", "load_raw",
           "load_view", "standard_splits"]
