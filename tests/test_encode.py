"""A run folder is a model to apply: twoway_fast.load gives the model with the preprocessing fitted at
training time, which encodes new raw rows as `embed` does, wherever the folder has moved; `encode`
writes every row of one view or both; wrong widths are refused with the widths named."""
import shutil

import numpy as np
import pytest
import torch

import twoway_fast
from twoway_fast import run
from twoway_fast.cli import main
from twoway_fast.data import Preprocessing

from conftest import SMALL_TRAIN

# Stateful preprocessing (a standardisation and a PCA fitted on the training split), so applying the
# run's own fit and refitting on other data give different rows.
FITTED = ["--set", "data.preprocess='standardize'", "--set", "data.pca=20"]


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A run trained in one folder, then moved elsewhere (the original removed)."""
    where = tmp_path_factory.mktemp("trained")
    assert main(["train", "--preset", "digits", "--data", "digits", "--out", str(where / "run"), "--epochs", "1",
                 *FITTED, *SMALL_TRAIN]) == 0
    moved = tmp_path_factory.mktemp("moved") / "run"
    shutil.copytree(where / "run", moved)
    shutil.rmtree(where / "run")
    return moved


def new_rows(n=40, seed=0):
    """Rows no split of digits holds: digits halves, shuffled and jittered."""
    raw = twoway_fast.data.load_digits().splits["all"]
    images = np.random.default_rng(seed).permutation(raw.x.shape[0])[:n]
    jitter = np.random.default_rng(seed + 1).normal(0, 0.05, size=(n, raw.x.shape[1])).astype(np.float32)
    return raw.x[images] + jitter, raw.y[images] - jitter


def as_source(path, x, y):
    """An .npz in the cache layout whose test split is (x, y); its train split is unlike the run's."""
    other = np.random.default_rng(7).random((30, x.shape[1]), dtype=np.float32) * 3
    np.savez(path, train_x=other, train_y=other, validate_x=other[:5], validate_y=other[:5], test_x=x, test_y=y)
    return path


def test_loaded_run_encodes_new_raw_rows_as_embed_does(moved_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither the training's directory nor the run's
    x, y = new_rows()
    source = as_source(tmp_path / "new.npz", x, y)
    assert main(["embed", str(moved_run), "--data", str(source), "--split", "test", "--out", "embed.npz",
                 "--device", "cpu"]) == 0
    embedded = np.load("embed.npz")
    model = twoway_fast.load(moved_run)
    assert isinstance(model, twoway_fast.TwoWayNet) and not model.training
    assert isinstance(model.preprocessing, Preprocessing) and model.preprocessing.x.describe() == "standardize, PCA to 20"
    with torch.no_grad():
        zx, zy = model.encode_x(x), model.encode_y(torch.from_numpy(y))  # an array or a tensor
    np.testing.assert_array_equal(zx.numpy(), embedded["x"])
    np.testing.assert_array_equal(zy.numpy(), embedded["y"])
    # The preprocessing is the run's, not one fitted on the rows given: a refit would change them.
    refit = model.preprocessing.x.transform(x)
    standardized = (x - x.mean(0)) / x.std(0)
    assert not np.allclose(refit, (standardized - standardized.mean(0)) @ model.preprocessing.x.components.T)


def test_encode_one_view_or_both_every_row_in_order(moved_run, tmp_path, capsys):
    x, y = new_rows(25)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "y.npz", y=y)
    out = tmp_path / "both.npz"
    assert main(["encode", str(moved_run), "--x", str(tmp_path / "x.npy"), "--y", str(tmp_path / "y.npz"),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "x (25, 8), y (25, 8) float32, raw, every row of the input in order" in capsys.readouterr().out
    model = twoway_fast.load(moved_run)
    with torch.no_grad():
        np.testing.assert_array_equal(np.load(out)["x"], model.encode_x(x).numpy())
        np.testing.assert_array_equal(np.load(out)["y"], model.encode_y(y).numpy())
    assert main(["encode", str(moved_run), "--y", str(tmp_path / "y.npz"), "--out", str(tmp_path / "y_only.npz"),
                 "--device", "cpu"]) == 0
    with np.load(tmp_path / "y_only.npz") as alone:
        assert alone.files == ["y"]
        np.testing.assert_array_equal(alone["y"], np.load(out)["y"])
    # Reversed rows come back reversed: row i of the output is row i of the input.
    np.save(tmp_path / "x_reversed.npy", x[::-1])
    assert main(["encode", str(moved_run), "--x", str(tmp_path / "x_reversed.npy"), "--out",
                 str(tmp_path / "reversed.npz"), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "reversed.npz")["x"], np.load(out)["x"][::-1])


def test_encode_projected_applies_the_runs_projection(moved_run, tmp_path):
    from twoway_fast.projection import FILE, Projection

    x, _ = new_rows(30)
    np.save(tmp_path / "x.npy", x)
    for flags, name in (([], "raw.npz"), (["--projected"], "projected.npz")):
        assert main(["encode", str(moved_run), "--x", str(tmp_path / "x.npy"), *flags, "--out", str(tmp_path / name),
                     "--device", "cpu"]) == 0
    projection = Projection.load(moved_run / FILE)
    expected = projection.x(torch.from_numpy(np.load(tmp_path / "raw.npz")["x"]))
    np.testing.assert_allclose(np.load(tmp_path / "projected.npz")["x"], expected.numpy(), rtol=1e-6, atol=1e-6)


def test_wrong_widths_are_refused_with_the_widths_named(moved_run, tmp_path, capsys):
    model = twoway_fast.load(moved_run)
    with pytest.raises(ValueError, match=r"x has 30 features per row; the model's x view takes raw rows of 32 "
                                         r"features \(preprocessing: standardize, PCA to 20; 20 into the network\)"):
        model.encode_x(np.zeros((3, 30), np.float32))
    with pytest.raises(ValueError, match=r"y has shape \(32,\), not \(rows, features\)"):
        model.encode_y(np.zeros(32, np.float32))
    np.save(tmp_path / "narrow.npy", np.zeros((4, 31), np.float32))
    assert main(["encode", str(moved_run), "--y", str(tmp_path / "narrow.npy"), "--out", str(tmp_path / "o.npz"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "narrow.npy: y has 31 features per row; the model's y view takes raw rows of 32 features" in err
    assert not (tmp_path / "o.npz").exists()
    assert main(["encode", str(moved_run), "--out", str(tmp_path / "o.npz"), "--device", "cpu"]) == 2
    assert "encode needs --x FILE, --y FILE or both" in capsys.readouterr().err


def test_view_files_as_the_loaders_take_them(moved_run, tmp_path):
    from twoway_fast.data import load_view
    from twoway_fast.data.idx import write_idx

    images = np.random.default_rng(0).integers(0, 256, size=(6, 4, 8), dtype=np.uint8)
    write_idx(tmp_path / "images-idx3-ubyte.gz", images)
    left = load_view(tmp_path / "images-idx3-ubyte.gz", "x")
    right = load_view(tmp_path / "images-idx3-ubyte.gz", "y")
    halves = twoway_fast.data.image_halves(images.astype(np.float32) / 255)
    np.testing.assert_array_equal(left, halves[0])
    np.testing.assert_array_equal(right, halves[1])
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"two\.npz: expected an array named 'x' or a single array; found \['a', 'b'\]"):
        load_view(tmp_path / "two.npz", "x")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"nan\.npy: view y holds NaN or Inf \(first at row 0\)"):
        load_view(tmp_path / "nan.npy", "y")
    (tmp_path / "rows.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="a view file must be .npy, .npz or IDX"):
        load_view(tmp_path / "rows.csv", "x")


def test_preprocessing_file_holds_plain_arrays_and_is_checked(moved_run, tmp_path):
    with np.load(moved_run / run.PREPROCESSING, allow_pickle=False) as arrays:
        assert arrays["x_components"].shape == (20, 32)
    bad = tmp_path / "run"
    shutil.copytree(moved_run, bad)
    with np.load(moved_run / run.PREPROCESSING) as arrays:
        contents = dict(arrays)
    np.savez(bad / run.PREPROCESSING, **(contents | {"x_components": contents["x_components"][:, :5]}))
    with pytest.raises(ValueError, match="view x's preprocessing arrays do not fit together"):
        twoway_fast.load(bad)
    np.savez(bad / run.PREPROCESSING, **(contents | {"y_kind": np.array([object()], dtype=object)}))
    with pytest.raises(ValueError, match="cannot read the fitted preprocessing"):  # a pickle: never loaded
        twoway_fast.load(bad)
    (bad / run.PREPROCESSING).unlink()
    with pytest.raises(ValueError, match="preprocessing.npz: missing"):
        twoway_fast.load(bad)
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        twoway_fast.load(moved_run, "first")


def test_preprocessing_undoes_itself_where_it_can():
    from twoway_fast.config import DataConfig
    from twoway_fast.data import RawSplit, fit_preprocessing

    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, size=(200, 6)), rng.normal(size=(200, 4))
    fitted = fit_preprocessing(RawSplit(a, b, "test"), DataConfig(preprocess="standardize", pca=4))
    assert fitted.x.transform(a).dtype == np.float32 and fitted.x.transform(a).shape == (200, 4)
    full = fit_preprocessing(RawSplit(a[:, :4], b, "test"), DataConfig(preprocess="standardize", pca=4)).x
    np.testing.assert_allclose(full.inverse_transform(full.transform(a[:, :4])), a[:, :4], rtol=1e-5, atol=1e-5)
    rows = fit_preprocessing(RawSplit(a, b, "test"), DataConfig(preprocess="l2_rows")).x
    np.testing.assert_allclose(np.linalg.norm(rows.inverse_transform(rows.transform(a)), axis=1), 1, rtol=1e-6)
