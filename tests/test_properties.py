"""Property tests: the fused ops of twoway_fast.ops against their plain-PyTorch oracles over random
shapes, memory layouts (transposed, strided, offset, expanded: handled, not refused) and dtypes.

Values come from a drawn seed rather than element by element, so each example is cheap; the number
of examples is bounded so the suite stays quick."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twoway_fast import reference, retrieval

ops = pytest.importorskip("twoway_fast.ops", reason="twoway_fast._C is not built")

from conftest import assert_close  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None)
LAYOUTS = ("contiguous", "transposed", "strided", "expanded")
DTYPES = st.sampled_from([torch.float32, torch.float64])


def laid_out(base: torch.Tensor, layout: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A view of `base` with logical `shape` (base is built by `base_for`, values as drawn)."""
    if layout == "contiguous":
        return base
    if layout == "transposed":
        return base.T if base.dim() == 2 else base
    if layout == "strided":  # every other element along each dimension, from offset 1
        return base[tuple(slice(1, None, 2) for _ in shape)]
    return base.expand(shape)  # expanded: stride 0 along the last dimension


def base_for(layout: str, shape: tuple[int, ...], make) -> torch.Tensor:
    """The tensor a layout views: `make(shape)` fills a tensor of the given shape with values."""
    if layout == "transposed" and len(shape) == 2:
        return make(shape[::-1])
    if layout == "strided":
        return make(tuple(2 * n + 1 for n in shape))
    if layout == "expanded":
        return make((*shape[:-1], 1))
    return make(shape)


@st.composite
def hidden_block_cases(draw):
    rows, cols = draw(st.integers(2, 70)), draw(st.integers(1, 140))  # across the kernel's 64-column chunks
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale, shift = draw(st.floats(0.1, 10.0)), draw(st.floats(-5.0, 5.0))
    tensors = {}
    for name, shape, fill in (
        ("z", (rows, cols), lambda s: torch.randn(s, generator=gen, dtype=dtype) * scale + shift),
        ("gamma", (cols,), lambda s: torch.rand(s, generator=gen, dtype=dtype) + 0.5),
        ("beta", (cols,), lambda s: torch.randn(s, generator=gen, dtype=dtype)),
    ):
        layout = draw(st.sampled_from(LAYOUTS))
        base = base_for(layout, shape, fill).requires_grad_()
        tensors[name] = (base, laid_out(base, layout, shape))
    # rng_state as a strided view too: (seed, offset, first_row) at every other element
    words = [draw(st.integers(0, 2**62)), draw(st.integers(0, 2**40)), draw(st.integers(0, 2**20))]
    rng_state = torch.tensor([words[0], -1, words[1], -1, words[2]], dtype=torch.int64)[::2]
    args = (rng_state, draw(st.sampled_from([0.0, 0.3, 0.5])), draw(st.floats(0.0, 0.5)),
            draw(st.sampled_from([1e-3, 1e-5])), draw(st.booleans()))
    return tensors, args, dtype


def assert_scaled_close(got, want, dtype, what):
    """Relative to the largest value: gradients summed over many rows grow with the batch."""
    scale = want.detach().abs().max().clamp_min(1)
    assert_close(got.detach() / scale, want.detach() / scale, dtype, what)


@SETTINGS
@given(hidden_block_cases())
def test_hidden_block_matches_reference(case):
    tensors, args, dtype = case
    views = [view for _, view in tensors.values()]
    leaves = [base for base, _ in tensors.values()]
    fused = ops.hidden_block(*views, *args)
    ref = reference.hidden_block(*views, *args)
    assert all(t.dtype == dtype and t.is_contiguous() for t in fused)
    for name, a, b in zip(("out", "mean", "std"), fused, ref):
        assert_scaled_close(a, b, dtype, name)
    grad = torch.randn(fused[0].shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(fused[0], leaves, grad)
    want = torch.autograd.grad(ref[0], leaves, grad)
    for name, a, b in zip(("grad z", "grad gamma", "grad beta"), got, want):
        assert_scaled_close(a, b, dtype, name)


@st.composite
def retrieval_cases(draw):
    n, d = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    m = draw(st.integers(n, 3 * n))
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # small integers: every score is exact in both dtypes and ties are frequent, so ranks must agree exactly
    make = lambda s: torch.randint(-2, 3, s, generator=gen).to(dtype)  # noqa: E731
    views = []
    for rows in (n, m):
        layout = draw(st.sampled_from(LAYOUTS))
        views.append(laid_out(base_for(layout, (rows, d), make), layout, (rows, d)))
    group = torch.cat([torch.arange(n), torch.randint(0, n, (m - n,), generator=gen)])
    group = group[torch.randperm(m, generator=gen)]
    return views[0], views[1], group, draw(st.integers(1, n + 2))


@SETTINGS
@given(retrieval_cases())
def test_retrieval_ranks_match_plain_pytorch(case):
    a, b, group, tile_rows = case
    got = ops.retrieval_ranks(a, b, group, tile_rows)
    want = retrieval.plain_ranks(a, b, group)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
