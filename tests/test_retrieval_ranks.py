"""retrieval_ranks (fused op, its plain-PyTorch fallback, the public function) against an argsort oracle.

Exactness: most data here makes every similarity exactly representable in float32 (small integers, or
rows whose correlation-normalised form is a pattern of +-1/2), so any GEMM rounding order gives the
same scores and deliberate ties are real ties. Gaussian data is checked in float64 exactly, and in
float32 against bounds that allow for the normalisation's rounding; near-copies (scores a few float32
ulps apart) check that the op's float64 scores, not the GEMM's rounding, decide."""
import numpy as np
import pytest
import torch

from twoway_fast import metrics, ops, retrieval
from twoway_fast._extension import has_kernel

CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and has_kernel("retrieval_ranks", "cuda")),
                          reason="needs a GPU and a CUDA build of twoway_fast._C")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
CPU_TILE = retrieval.TILE_ROWS["cpu"]


def argsort_oracle(scores: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Rank of the first matching candidate when candidates are sorted by score, best first, the
    non-matching ones first among equal scores (ties count against the query)."""
    order = np.lexsort((match, -scores), axis=-1)
    return 1 + np.argmax(np.take_along_axis(match, order, axis=-1), axis=-1)


def oracle(scores: np.ndarray, group: np.ndarray):
    """Both directions from the exact (n, m) score matrix."""
    n = scores.shape[0]
    match = group[None, :] == np.arange(n)[:, None]
    return argsort_oracle(scores, match), argsort_oracle(scores.T, match.T)


def make_group(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """Every a row gets at least one b row; the rest are spread at random, then shuffled."""
    extra = torch.randint(0, n, (m - n,), generator=gen)
    group = torch.cat([torch.arange(n), extra])
    return group[torch.randperm(m, generator=gen)]


def integer_rows(rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Small integers: dot products are exact, ties are common; a few duplicated rows on top."""
    x = torch.randint(-2, 3, (rows, d), generator=gen).double()
    if rows > 3:
        x[1::3] = x[0:rows - 1:3][: len(x[1::3])]  # duplicates of earlier rows
    return x


def check_op(a: torch.Tensor, b: torch.Tensor, group: torch.Tensor, device: str, tile_rows: int, dtype=torch.float32):
    want = oracle((a @ b.T).numpy(), group.numpy())
    got = ops.retrieval_ranks(a.to(device, dtype), b.to(device, dtype), group.to(device), tile_rows)
    for w, g in zip(want, got):
        assert g.dtype == torch.int64 and g.device.type == device
        np.testing.assert_array_equal(g.cpu().numpy(), w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, m, tile_rows", [(1, 1, 4), (1, 5, 4), (2, 2, 4), (2, 7, 1), (6, 6, 7), (7, 19, 7),
                                             (8, 8, 7), (30, 70, 7), (CPU_TILE - 1, CPU_TILE + 1, CPU_TILE),
                                             (CPU_TILE + 1, CPU_TILE + 1, CPU_TILE)])
def test_op_matches_oracle_with_ties_duplicates_and_groups(device, n, m, tile_rows):
    gen = torch.Generator().manual_seed(n * 1000 + m)
    a, b = integer_rows(n, 5, gen), integer_rows(m, 5, gen)
    check_op(a, b, make_group(n, m, gen), device, tile_rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_op_other_dtypes(device, dtype):
    gen = torch.Generator().manual_seed(3)
    a, b = integer_rows(40, 6, gen), integer_rows(90, 6, gen)  # small integers: exact in every dtype
    check_op(a, b, make_group(40, 90, gen), device, 16, dtype)


def test_plain_fallback_matches_oracle():
    gen = torch.Generator().manual_seed(4)
    a, b = integer_rows(50, 5, gen), integer_rows(120, 5, gen)
    group = make_group(50, 120, gen)
    want = oracle((a @ b.T).numpy(), group.numpy())
    for w, g in zip(want, retrieval.plain_ranks(a.float(), b.float(), group)):
        np.testing.assert_array_equal(g.numpy(), w)


def balanced_patterns(rows: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of eight entries: two +1, two -1, four 0. Centred, norm 2: normalised they are exactly x / 2."""
    base = torch.tensor([1.0, 1, -1, -1, 0, 0, 0, 0], dtype=torch.float64)
    return torch.stack([base[torch.randperm(8, generator=gen)] for _ in range(rows)])


def affine_copies(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each row scaled by a power of two and shifted by an integer: the same correlation, exactly."""
    scale = 2.0 ** torch.randint(0, 3, (x.shape[0], 1), generator=gen)
    shift = torch.randint(-2, 3, (x.shape[0], 1), generator=gen).double()
    return x * scale + shift


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, m", [(1, 3), (2, 2), (45, 45), (CPU_TILE + 1, 3 * CPU_TILE)])
def test_public_correlation_ranks_exact(device, n, m):
    gen = torch.Generator().manual_seed(n + m)
    pa, pb = balanced_patterns(n, gen), balanced_patterns(m, gen)  # 420 patterns: many duplicates
    group = make_group(n, m, gen) if n != m else None
    want = oracle((pa / 2 @ (pb / 2).T).numpy(), (group if group is not None else torch.arange(n)).numpy())
    a, b = affine_copies(pa, gen).float().to(device), affine_copies(pb, gen).float().to(device)
    got = metrics.retrieval_ranks(a, b, None if group is None else group.to(device))
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.cpu().numpy(), w)


@pytest.mark.parametrize("device", DEVICES)
def test_public_gaussian_float64_exact(device):
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(80, 12, generator=gen, dtype=torch.float64), torch.randn(200, 12, generator=gen, dtype=torch.float64)
    group = make_group(80, 200, gen)
    corr = np.corrcoef(a.numpy(), b.numpy())[:80, 80:]  # independent of the code under test
    want = oracle(corr, group.numpy())
    got = metrics.retrieval_ranks(a.to(device), b.to(device), group.to(device))
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.cpu().numpy(), w)


@pytest.mark.parametrize("device", DEVICES)
def test_public_gaussian_float32_within_rounding_bounds(device):
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(300, 16, generator=gen), torch.randn(700, 16, generator=gen)
    group = make_group(300, 700, gen)
    corr = np.corrcoef(a.double().numpy(), b.double().numpy())[:300, 300:]
    got = metrics.retrieval_ranks(a.to(device), b.to(device), group.to(device))
    tol = 1e-5  # well above float32 rounding of a 16-term correlation
    for scores, match, g in [(corr, group.numpy()[None] == np.arange(300)[:, None], got[0]),
                             (corr.T, group.numpy()[:, None] == np.arange(300)[None], got[1])]:
        best = np.where(match, scores, -np.inf).max(1, keepdims=True)
        lower = 1 + ((scores > best + tol) & ~match).sum(1)
        upper = 1 + ((scores >= best - tol) & ~match).sum(1)
        g = g.cpu().numpy()
        assert ((lower <= g) & (g <= upper)).all()
        assert (lower == upper).mean() > 0.9  # the bounds pin most ranks exactly


@pytest.mark.parametrize("ranks", [metrics.retrieval_ranks, lambda a, b, g: retrieval.plain_ranks(
    retrieval.correlation_normalise(a), retrieval.correlation_normalise(b), g)], ids=["public", "plain"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [37, 64])
def test_duplicate_of_the_true_candidate_is_a_tie(ranks, device, dtype, d):
    """A non-matching copy of the true candidate ties with it: rank exactly 2, never 1, both ways.
    (One MKL GEMM rounds identical columns at different positions differently in the last bit; this
    data catches that on a few queries when candidates are not de-duplicated.)"""
    gen = torch.Generator().manual_seed(7)
    n = 2 * CPU_TILE + 3
    a = torch.randn(n, d, generator=gen, dtype=dtype)
    b = a + 0.05 * torch.randn(n, d, generator=gen, dtype=dtype)  # caption i is far closer to image i than to others
    own = torch.arange(n)
    # a2b: image i owns caption b[i] and a copy of b[i - 1]; the copy of b[i] belongs to image i + 1.
    perm = torch.randperm(2 * n, generator=gen)
    captions, group = torch.cat([b, b])[perm], torch.cat([own, (own + 1) % n])[perm]
    ranks_a2b, _ = ranks(a.to(device), captions.to(device), group.to(device))
    assert (ranks_a2b == 2).all()
    # b2a: every image appears twice (shuffled); each copy has its own caption, so it has a twin.
    twin = torch.randperm(2 * n, generator=gen)
    _, ranks_b2a = ranks(torch.cat([a, a])[twin].to(device), b[twin % n].to(device), torch.arange(2 * n, device=device))
    assert (ranks_b2a == 2).all()


@pytest.mark.parametrize("device", DEVICES)
def test_ranks_do_not_depend_on_gemm_shape_or_precision(device):
    """The scores that count are float64 dot products; the GEMM block only sorts out the clear cases.
    So tile size (which changes the GEMM's rounding) and reduced-precision float32 matmuls (TF32/bf16:
    a wider band, more near-ties recomputed) leave every rank unchanged."""
    gen = torch.Generator().manual_seed(10)
    a = torch.randn(97, 33, generator=gen)
    group = make_group(97, 301, gen)
    # Near-copies of 12 rows: scores a few float32 ulps apart, which one float32 GEMM orders differently
    # at different tile sizes (measured: 36 to 46 of the 97 image ranks change).
    base = torch.randn(12, 33, generator=gen)
    b = base[torch.randint(0, 12, (301,), generator=gen)] + 1e-6 * torch.randn(301, 33, generator=gen)
    exact = oracle((a.double() @ b.double().T).numpy(), group.numpy())  # float64 resolves every near-tie
    a, b, group = a.to(device), b.to(device), group.to(device)
    want = ops.retrieval_ranks(a, b, group, 97)
    for e, w in zip(exact, want):
        np.testing.assert_array_equal(w.cpu().numpy(), e)
    for tile_rows in (1, 5, 64):
        for w, g in zip(want, ops.retrieval_ranks(a, b, group, tile_rows)):
            assert torch.equal(w, g)
    backend = torch.backends.cuda.matmul if device == "cuda" else torch.backends.mkldnn.matmul
    saved = backend.fp32_precision
    try:
        backend.fp32_precision = "bf16" if device == "cpu" else "tf32"
        for w, g in zip(want, ops.retrieval_ranks(a, b, group, 16)):
            assert torch.equal(w, g)
    finally:
        backend.fp32_precision = saved


@pytest.mark.parametrize("device", DEVICES)
def test_nan_counts_against_the_query(device):
    gen = torch.Generator().manual_seed(8)
    a, b = integer_rows(20, 5, gen), integer_rows(30, 5, gen)
    group = make_group(20, 30, gen)
    a[3, 0] = float("nan")  # image 3 scores NaN against every caption
    want = retrieval.plain_ranks(a.float(), b.float(), group)
    got = ops.retrieval_ranks(a.float().to(device), b.float().to(device), group.to(device), 8)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.cpu().numpy(), w.numpy())
    assert got[0][3] == 1 + 30 - (group == 3).sum()  # the worst rank it can have
    others = group != 3
    assert (got[1][others].cpu() >= 2).all()  # image 3 is counted above every other caption's image


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(9)
    a, b = integer_rows(9, 4, gen).float().to(device), integer_rows(13, 4, gen).float().to(device)
    torch.library.opcheck(torch.ops.twoway_fast.retrieval_ranks.default, (a, b, make_group(9, 13, gen).to(device), 4))


@pytest.mark.parametrize("args, message", [
    (lambda a, b, g: (a, b[:, :3], g, 4), r"one d, got shapes \[5, 4\] and \[7, 3\]"),
    (lambda a, b, g: (a, b.double(), g, 4), "of one dtype, got Float and Double"),
    (lambda a, b, g: (a.long(), b.long(), g, 4), "floating point of one dtype, got Long"),
    (lambda a, b, g: (a[:0], b, g, 4), "at least one row each"),
    (lambda a, b, g: (a, b, g.int(), 4), r"group must be int64 of shape \(7\), got Int"),
    (lambda a, b, g: (a, b, g[:6], 4), r"shape \(7\), got Long of shape \[6\]"),
    (lambda a, b, g: (a, b, g, 0), "tile_rows must be positive, got 0"),
    (lambda a, b, g: (a, b, g + 1, 4), r"index rows of a \(0..4\), got 1..5"),
    (lambda a, b, g: (a, b, g.clamp(max=3), 4), "1 rows have none"),
])
def test_op_rejects_bad_inputs(args, message):
    a, b = torch.zeros(5, 4), torch.zeros(7, 4)
    g = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    with pytest.raises(RuntimeError, match=message):
        ops.retrieval_ranks(*args(a, b, g))


def test_public_rejects_bad_inputs():
    a, b = torch.zeros(5, 4), torch.zeros(7, 4)
    with pytest.raises(ValueError, match="same number of rows, got 5 and 7"):
        metrics.retrieval_ranks(a, b)
    with pytest.raises(ValueError, match="at least one matching row"):
        metrics.retrieval_ranks(a, b, torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="one dtype on one device, got torch.float32 on cpu and torch.float64"):
        metrics.retrieval_ranks(a, b.double(), torch.tensor([0, 1, 2, 3, 4, 0, 1]))
