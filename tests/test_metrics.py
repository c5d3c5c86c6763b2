import numpy as np
import pytest
import torch

from twoway_fast import metrics

RNG = np.random.default_rng(0)


def correlated(n, k, rho, seed=0):
    """Pairs with canonical correlations rho (known), mixed by random invertible maps."""
    rng = np.random.default_rng(seed)
    rho = np.asarray(rho)
    z = rng.normal(size=(n, k))
    a = z
    b = rho * z + np.sqrt(1 - rho ** 2) * rng.normal(size=(n, k))
    return a @ rng.normal(size=(k, k)), b @ rng.normal(size=(k, k))


def test_total_correlation_brute_force():
    a, b = RNG.normal(size=(50, 6)), RNG.normal(size=(50, 6))
    b[:, :3] += a[:, :3]
    expected = sum(np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(6))
    assert metrics.total_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-10)
    a[:, 2] = 1.0  # a constant column contributes 0, not NaN
    expected = sum(np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(6) if i != 2)
    assert metrics.total_correlation(a, b) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="one shape"):
        metrics.total_correlation(a, b[:, :5])


def test_effective_rank_brute_force():
    h = RNG.normal(size=(400, 8)) @ RNG.normal(size=(8, 8))
    eig = np.linalg.eigvalsh(np.corrcoef(h, rowvar=False))
    assert metrics.effective_rank(h) == pytest.approx(eig.sum() ** 2 / (eig ** 2).sum(), rel=1e-9)
    one = RNG.normal(size=(100, 1)) * np.arange(1, 6)  # 5 columns, one direction: collapsed
    assert metrics.effective_rank(one) == pytest.approx(1.0, rel=1e-9)
    independent = RNG.normal(size=(20000, 10))
    assert metrics.effective_rank(independent) == pytest.approx(10, rel=0.01)


def brute_cca(a, b, ridge=metrics.CCA_RIDGE):
    """CCA as the generalised eigenproblem inv(Caa) Cab inv(Cbb) Cba w = rho^2 w."""
    a, b = a - a.mean(0), b - b.mean(0)
    n = len(a) - 1
    caa, cbb, cab = a.T @ a / n, b.T @ b / n, a.T @ b / n
    caa = caa + ridge * np.trace(caa) / len(caa) * np.eye(len(caa))
    cbb = cbb + ridge * np.trace(cbb) / len(cbb) * np.eye(len(cbb))
    vals, vecs = np.linalg.eig(np.linalg.solve(caa, cab) @ np.linalg.solve(cbb, cab.T))
    order = np.argsort(-vals.real)
    wa = vecs[:, order].real
    wb = np.linalg.solve(cbb, cab.T) @ wa
    return np.sqrt(np.clip(vals.real[order], 0, None)), wa, wb


def test_linear_cca_brute_force():
    a, b = correlated(3000, 4, [0.9, 0.7, 0.4, 0.1])
    b = np.hstack([b, RNG.normal(size=(3000, 2))])  # dy = 6 > dx = 4
    *_, corrs = metrics.linear_cca(a, b)
    rho, wa, wb = brute_cca(a, b)
    np.testing.assert_allclose(corrs, rho[:4], rtol=1e-8)
    np.testing.assert_allclose(corrs, [0.9, 0.7, 0.4, 0.1], atol=0.04)  # the known structure
    # test-set protocol: project new pairs with the training directions
    ta, tb = correlated(2000, 4, [0.9, 0.7, 0.4, 0.1], seed=1)
    tb = np.hstack([tb, RNG.normal(size=(2000, 2))])
    ta_c, tb_c = ta - a.mean(0), tb - b.mean(0)
    expected = sum(np.corrcoef(ta_c @ wa[:, i], tb_c @ wb[:, i])[0, 1] for i in range(2))
    assert metrics.cca_correlation(a, b, ta, tb, k=2) == pytest.approx(expected, rel=1e-6)


def test_cca_protocol_sees_collapse_that_paired_figure_misses():
    """50 dimensions that copy 2 directions: the paired figure is near 50, the CCA protocol near 2."""
    z = RNG.normal(size=(4000, 2))
    noise = lambda: 0.05 * RNG.normal(size=(4000, 50))  # noqa: E731
    a = z[:, [i % 2 for i in range(50)]] + noise()
    b = z[:, [i % 2 for i in range(50)]] + noise()
    assert metrics.total_correlation(a[2000:], b[2000:]) > 45
    assert metrics.cca_correlation(a[:2000], b[:2000], a[2000:], b[2000:]) < 4
    assert metrics.effective_rank(a) < 2.5


def brute_ranks(a, b, group):
    """Full similarity matrix, sort, position of the best true match (1-based)."""
    sim = np.corrcoef(a, b)[: len(a), len(a):]  # Pearson correlation of rows
    a2b = [1 + int(np.argsort(-sim[i]).tolist().index(max(np.flatnonzero(group == i), key=lambda j: sim[i, j])))
           for i in range(len(a))]
    b2a = [1 + int(np.argsort(-sim[:, j]).tolist().index(group[j])) for j in range(len(b))]
    return np.array(a2b), np.array(b2a)


def test_retrieval_with_captions_brute_force():
    images = RNG.normal(size=(30, 8))
    group = np.repeat(np.arange(30), 5)
    captions = images[group] + 1.5 * RNG.normal(size=(150, 8))
    result = metrics.retrieval(torch.tensor(images), torch.tensor(captions), torch.tensor(group))
    a2b, b2a = brute_ranks(images, captions, group)
    for name, ranks in (("x2y", a2b), ("y2x", b2a)):
        for k in (1, 5, 10):
            assert result[name][f"r{k}"] == pytest.approx(100 * np.mean(ranks <= k))
        assert result[name]["medr"] == np.median(ranks)
    assert 0 < result["x2y"]["r1"] < 100  # the case is neither trivial nor hopeless


def test_recall_summary():
    out = metrics.recall_summary(torch.tensor([1, 2, 5, 6, 11, 40]))
    assert out == {"r1": pytest.approx(100 / 6), "r5": pytest.approx(50), "r10": pytest.approx(400 / 6), "medr": 5.5}
