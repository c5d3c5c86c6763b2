import gzip

import numpy as np
import pytest
import torch

from twoway_fast import data
from twoway_fast.data.idx import read_idx, write_idx

RNG = np.random.default_rng(0)


def mnist_dir(tmp_path, n_train=50, n_test=20, h=6, w=4, gz=True):
    train = RNG.integers(0, 256, (n_train, h, w), dtype=np.uint8)
    test = RNG.integers(0, 256, (n_test, h, w), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    return train, test


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (RNG.normal(size=(3, 5, 2)) * 100).astype(dtype)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype.kind == a.dtype.kind and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_truncated_and_trailing(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((4, 3, 3), np.uint8))
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"cut\.idx: truncated"):
        read_idx(tmp_path / "cut.idx")
    (tmp_path / "head.idx").write_bytes(raw[:10])
    with pytest.raises(ValueError, match=r"head\.idx: truncated IDX header"):
        read_idx(tmp_path / "head.idx")
    (tmp_path / "long.idx").write_bytes(raw + b"xx")
    with pytest.raises(ValueError, match=r"long\.idx: has trailing bytes"):
        read_idx(tmp_path / "long.idx")


def test_idx_bad_magic_and_corrupt_gzip(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x03" + bytes(40))
    with pytest.raises(ValueError, match=r"bad\.idx: not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "bad.gz").write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match=r"bad\.gz: cannot read IDX data"):
        read_idx(tmp_path / "bad.gz")
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + bytes(9))
    (tmp_path / "cut.gz").write_bytes(good[:-6])  # a gzip stream cut short
    with pytest.raises(ValueError, match=r"cut\.gz"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_dir_halves_and_splits(tmp_path, gz):
    train, test = mnist_dir(tmp_path, gz=gz)
    d = data.load(tmp_path, data.DataConfig(preprocess="none"))
    assert (d.dx, d.dy) == (12, 12) and d.half_shape == (6, 2)
    assert (len(d.train), len(d.val), len(d.test)) == (45, 5, 20)
    # test rows in file order; x = left 2 columns column-major, y = right 2 columns
    np.testing.assert_allclose(d.test.x.numpy(), test[:, :, :2].transpose(0, 2, 1).reshape(20, -1) / 255, rtol=1e-6)
    np.testing.assert_allclose(d.test.y.numpy(), test[:, :, 2:].transpose(0, 2, 1).reshape(20, -1) / 255, rtol=1e-6)
    # train + val partition the training file, the same way on every load (fixed seed)
    full = train.transpose(0, 2, 1).reshape(50, -1)[:, :12]
    got = np.rint(np.concatenate([d.train.x.numpy(), d.val.x.numpy()]) * 255).astype(np.uint8)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, full.tolist()))
    again = data.load(tmp_path, data.DataConfig(preprocess="none"))
    assert torch.equal(again.val.x, d.val.x)


def test_mnist_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="no data found"):
        data.load(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="odd"):
        data.load(tmp_path)


def test_digits():
    from sklearn.datasets import load_digits

    d = data.load("digits", data.DataConfig(preprocess="none"))
    assert (d.dx, d.dy, d.half_shape) == (32, 32, (8, 4))
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    images = load_digits().images / 16
    rows = images.transpose(0, 2, 1).reshape(1797, -1)
    assert any(np.allclose(d.test.x[0].numpy(), r[:32]) and np.allclose(d.test.y[0].numpy(), r[32:]) for r in rows)


def test_npz_pairs_and_bad_arrays(tmp_path):
    x, y = RNG.normal(size=(100, 7)), RNG.normal(size=(100, 3))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = data.load(tmp_path / "d.npz", data.DataConfig(preprocess="none"))
    assert (d.dx, d.dy, len(d.test), len(d.val), len(d.train)) == (7, 3, 20, 8, 72)
    x[17, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"nan\.npz.*NaN or Inf \(first at row 17\)"):
        data.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "rows.npz", x=x[:50], y=y)
    with pytest.raises(ValueError, match=r"rows\.npz: x has 50 rows but y has 100"):
        data.load(tmp_path / "rows.npz")
    np.savez(tmp_path / "rank.npz", x=x[:, :, None], y=y)
    with pytest.raises(ValueError, match=r"rank\.npz: view x must be a 2-D array"):
        data.load(tmp_path / "rank.npz")
    np.savez(tmp_path / "keys.npz", a=x)
    with pytest.raises(ValueError, match=r"keys\.npz: expected arrays x and y"):
        data.load(tmp_path / "keys.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz: cannot read"):
        data.load(tmp_path / "junk.npz")


def cache_dir(tmp_path, items=(12, 4, 6), group=5, dx=6, dy=4):
    for name, n in zip(("train", "validate", "test"), items):
        images = RNG.normal(size=(n, dx))
        np.save(tmp_path / f"{name}_x.npy", np.repeat(images, group, axis=0).astype(np.float32))
        np.save(tmp_path / f"{name}_y.npy", RNG.normal(size=(n * group, dy)).astype(np.float32))


def test_cache_layout_groups(tmp_path):
    cache_dir(tmp_path)
    d = data.load(tmp_path, data.DataConfig(group_size=5))
    assert len(d.train) == 60 and len(d.test) == 30
    assert d.test.group.tolist() == [i // 5 for i in range(30)]
    assert d.test.item_rows().tolist() == list(range(0, 30, 5))
    with pytest.raises(ValueError, match=r"train_x\.npy.*rows 4\.\.7 are not one item repeated 4 times"):
        data.load(tmp_path, data.DataConfig(group_size=4))  # 60 rows divide by 4, but images come in 5s
    with pytest.raises(ValueError, match=r"do not divide into groups of 7"):
        data.load(tmp_path, data.DataConfig(group_size=7))
    (tmp_path / "test_y.npy").unlink()
    with pytest.raises(ValueError, match=r"missing \['test_y\.npy'\]"):
        data.load(tmp_path)


def test_memory_mapped_matches_in_memory(tmp_path):
    cache_dir(tmp_path, group=1)
    config = dict(preprocess="standardize", pca=3)
    mapped = data.load(tmp_path, data.DataConfig(mmap=True, **config))
    loaded = data.load(tmp_path, data.DataConfig(mmap=False, **config))
    assert isinstance(mapped.train.x, np.memmap) and isinstance(loaded.train.x, torch.Tensor)
    index = torch.tensor([3, 0, 5])
    for a, b in zip(mapped.test.rows(index), loaded.test.rows(index)):
        # IncrementalPCA (mapped) and PCA (in memory) agree up to each component's sign
        np.testing.assert_allclose(np.abs(a.numpy()), np.abs(b.numpy()), rtol=1e-3, atol=1e-4)


def test_preprocessing_fitted_on_train_only(tmp_path):
    x = RNG.normal(3.0, 2.0, size=(200, 5))
    y = RNG.normal(size=(200, 4)) * 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = data.load(tmp_path / "d.npz", data.DataConfig(preprocess="standardize"))
    tx = d.train.x.double().numpy()
    np.testing.assert_allclose(tx.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(tx.std(0), 1, atol=1e-5)
    assert abs(d.test.x.double().numpy().mean(0)).max() > 1e-3  # test used train's statistics
    l2 = data.load(tmp_path / "d.npz", data.DataConfig(preprocess="l2_rows"))
    np.testing.assert_allclose(np.linalg.norm(l2.test.y.numpy(), axis=1), 1, rtol=1e-5)
    pca = data.load(tmp_path / "d.npz", data.DataConfig(pca=2))
    assert (pca.dx, pca.dy, pca.train.x.shape[1]) == (2, 2, 2)
    with pytest.raises(ValueError, match="data.preprocess"):
        data.DataConfig(preprocess="whiten")


def test_batches_seeded_full_and_distinct():
    a = list(data.batches(103, 10, torch.Generator().manual_seed(1), torch.device("cpu")))
    b = list(data.batches(103, 10, torch.Generator().manual_seed(1), torch.device("cpu")))
    assert len(a) == 10 and all(len(i) == 10 for i in a)
    assert all(torch.equal(i, j) for i, j in zip(a, b))
    assert len(torch.cat(a).unique()) == 100
    assert torch.equal(torch.cat(list(data.batches(25, 5, None, torch.device("cpu")))), torch.arange(25))
