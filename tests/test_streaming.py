"""StreamingMoments: chunked statistics equal the one-shot float64 ones, and survive a large mean."""
import numpy as np
import pytest
import torch

from twoway_fast import metrics
from twoway_fast.streaming import StreamingMoments


def paired(n: int, k: int, seed: int, offset: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64)
    y = 0.6 * x + torch.randn(n, k, generator=gen, dtype=torch.float64)  # correlated, about 0.5 per dimension
    return x + offset, y - offset


def feed(x, y, chunk: int, full: bool) -> StreamingMoments:
    moments = StreamingMoments(full=full)
    for start in range(0, x.shape[0], chunk):
        moments.update(x[start:start + chunk], y[start:start + chunk])
    return moments


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("full", [False, True])
def test_total_correlation_matches_one_shot(chunk, full):
    x, y = paired(301, 5, seed=chunk)
    got = feed(x, y, chunk, full).total_correlation()
    assert got == pytest.approx(metrics.total_correlation(x, y), abs=1e-12)


def test_covariance_matches_numpy():
    x, y = paired(257, 4, seed=1)
    y = torch.cat([y, y[:, :2] ** 2], 1)  # kx != ky is fine for the covariance matrices
    cov = np.cov(torch.cat([x, y], 1).numpy(), rowvar=False)
    cxx, cyy, cxy = feed(x, y, 10, full=True).covariance()
    np.testing.assert_allclose(cxx.numpy(), cov[:4, :4], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cyy.numpy(), cov[4:, 4:], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cxy.numpy(), cov[:4, 4:], rtol=1e-12, atol=1e-14)
    vx, vy, vxy = feed(x[:, :4], y[:, :4], 10, full=False).covariance()
    np.testing.assert_allclose(vxy.numpy(), np.diag(cov[:4, 4:8]), rtol=1e-12)


def test_large_mean_does_not_cancel():
    """Sums of raw squares would lose everything here (1e8 squared against a spread of 1); the
    centred merge keeps the correlation to float64 precision."""
    x, y = paired(4000, 3, seed=2)
    want = metrics.total_correlation(x, y)  # the same data without the offset
    got = feed(*paired(4000, 3, seed=2, offset=1e8), chunk=333, full=False).total_correlation()
    assert got == pytest.approx(want, abs=1e-6)


def test_float32_chunks_accumulate_in_float64():
    x, y = paired(500, 3, seed=3)
    got = feed(x.float(), y.float(), 50, full=False)
    assert got.sxy.dtype == torch.float64
    assert got.total_correlation() == pytest.approx(metrics.total_correlation(x.float(), y.float()), abs=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"one b, got \(3, 2\) and \(4, 2\)"):
        StreamingMoments().update(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="kx == ky .or full=True., got 2 and 3"):
        StreamingMoments().update(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"earlier chunks had \(2, 2\), got \(3, 3\)"):
        StreamingMoments().update(torch.zeros(3, 2), torch.zeros(3, 2)).update(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        StreamingMoments().update(torch.zeros(1, 2), torch.zeros(1, 2)).total_correlation()
