"""Row normalisation (l2_rows preprocessing) and correlation similarity (retrieval) do not overflow for
finite float32 inputs: checked against a float64 oracle on rows scaled by 1e20 and values near 1e30,
where the squares pass float32's range (they became zeros, and a row lost its rank)."""
import numpy as np
import pytest
import torch

from twoway_fast import data
from twoway_fast.data.preprocessing import RowNormalizer
from twoway_fast.retrieval import correlation_normalise, plain_ranks, retrieval_ranks

pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")


def rows(n=12, d=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def oracle_normalise(a):
    a = a.double()
    centred = a - a.mean(1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-30, 1.0])
def test_correlation_normalise_matches_float64(scale):
    a = rows()
    a[3] *= scale
    a[7] *= np.float32(3e38) / a[7].abs().max()  # up to float32's largest finite value
    got = correlation_normalise(a)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), oracle_normalise(a), rtol=1e-5, atol=1e-6)


def test_scaling_first_changes_no_bit_of_ordinary_rows():
    a = rows(50, 9)
    centred = a - a.mean(1, keepdim=True)
    before = centred / centred.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    assert torch.equal(correlation_normalise(a), before)


@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_a_scaled_row_keeps_its_rank(scale):
    a, b = rows(seed=1), rows(seed=1) + 0.1 * rows(seed=2)  # each b row nearest its own a row
    want = plain_ranks(oracle_normalise(a), oracle_normalise(b), torch.arange(len(a)))
    a[4] *= scale
    b[9] *= scale  # correlation does not change with a row's scale
    for got, expected in zip(retrieval_ranks(a, b), want):
        assert torch.equal(got, expected)
    assert retrieval_ranks(a, b)[0][4] == 1


def test_retrieval_ranks_op_on_rows_as_given_past_float32_squares():
    from twoway_fast import ops

    a = rows(8, 5, seed=3)
    b = a + 0.05 * rows(8, 5, seed=4)
    a[2] *= 1e20  # its norm overflows float32: the kernel's bound must not
    b[5] *= 1e20
    want = plain_ranks(a.double(), b.double(), torch.arange(8))
    got = ops.retrieval_ranks(a, b, torch.arange(8), 3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("value", [1e30, 3e38, 1e-30])
def test_l2_rows_preprocessing_matches_float64(value):
    x = np.random.default_rng(5).uniform(0.5, 1.0, (10, 7)).astype(np.float32)
    x[2] *= np.float32(value / x[2].max())
    got = RowNormalizer().fit_transform(x)
    want = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_l2_rows_through_the_loader(tmp_path):
    x = np.random.default_rng(6).uniform(0.5, 1.0, (60, 4)).astype(np.float32)
    x[:, :] *= np.float32(1e30)
    np.savez(tmp_path / "d.npz", x=x, y=x[:, ::-1].copy())
    loaded = data.load(tmp_path / "d.npz", data.DataConfig(preprocess="l2_rows"))
    norms = loaded.train.x.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)


@pytest.mark.parametrize("preprocess", ["none", "l2_rows", "standardize"])
def test_complex_views_are_refused(tmp_path, preprocess):
    x = (np.random.default_rng(7).standard_normal((40, 4)) * (1 + 1j)).astype(np.complex64)
    np.savez(tmp_path / "c.npz", x=x, y=np.ones((40, 3), np.float32))
    with pytest.raises(ValueError, match=r"view x is complex \(complex64\)"):
        data.load(tmp_path / "c.npz", data.DataConfig(preprocess=preprocess))
