"""The CUDA kernels' device code run on the CPU under a host emulation of the CUDA execution model
(tests/cuda_emulation/: one std::thread per CUDA thread, a std::barrier for __syncthreads, warp
shuffles through the block's barrier). The block kernels (csrc/cuda/block_passes.cuh: the network op's
and the hidden block's passes) against the CPU passes (csrc/cpu/block_forward.h, block_backward.h) on the
same arguments: every flag combination, shapes with partial 4-column groups and partial thread blocks, float64 and
float32 tight, bfloat16/float16 against float32 within a stated tolerance. The loss's reduction
kernels (csrc/cuda/loss_sums.cuh) against the CPU loss op and sums in torch: empty and multi-tile
segments, more tiles than thread blocks, half precision; the log mid-way term's column sums (partial
column blocks, rows in stripes) and their logs in the finishing kernel.
What this checks on a machine without a GPU: the kernels' index math, the one Philox draw per 4
columns, the column sums across row stripes, the tile-to-segment walk and the reductions, and the
barrier structure. What it cannot: anything of the GPU itself (memory model, warp scheduling, launch
limits); the CUDA tests (tests/test_cuda_ops.py) do that on a GPU."""
import itertools
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from twoway_fast import ops, reference

from test_twoway_loss import COEFFICIENTS, loss_inputs, options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASE_SHAPES = [(2, 1), (3, 7), (17, 64), (33, 130)]  # 1 column; a partial 4-group; one block; 3 blocks
FLAGS = [(act_first, bias, pre, p, extra)
         for act_first, bias, pre, p, extra in itertools.product([True, False], [True, False], [True, False],
                                                                 [0.0, 0.5], [True, False])
         if act_first or not bias]  # the network op passes a bias only in act_first order
HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}  # relative to the largest entry (at least 1)


def build(source: str):
    """tests/cuda_emulation/<source> as an extension module, built under build/cuda-emulation."""
    name = Path(source).stem
    folder = ROOT / "build" / "cuda-emulation" / name
    folder.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(f"twoway_emulated_{name}", [str(ROOT / "tests/cuda_emulation" / source)],
                              extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "tests/cuda_emulation")],
                              extra_cflags=["-std=c++20", "-O1", "-pthread"], extra_ldflags=["-pthread"],
                              build_directory=str(folder))


@pytest.fixture(scope="module")
def kernels():
    return build("block_kernels.cpp")


@pytest.fixture(scope="module")
def loss_kernels():
    return build("loss_kernels.cpp")


def block_inputs(rows, cols, dtype, bias, extra):
    torch.manual_seed(rows * 1000 + cols)
    empty = torch.empty(0, dtype=dtype)
    z = torch.randn(rows, cols, dtype=dtype) * 2 + 0.5
    params = [torch.randn(cols, dtype=dtype) if bias else empty, torch.rand(cols, dtype=dtype) + 0.5,
              torch.randn(cols, dtype=dtype) * 0.1]
    grads = [torch.randn(rows, cols, dtype=dtype)] + ([torch.randn(rows, cols, dtype=dtype) for _ in range(2)]
                                                     if extra else [empty, empty])
    return z, params, grads


def run_both(kernels, z, params, grads, p, act_first, pre, cpu_dtype):
    """(emulated CUDA results, CPU results): forward (z, out, pre, mean, std), backward (grad_z, a_out,
    dgamma, dbeta, dbias); the CPU runs in cpu_dtype on the same values."""
    rng = torch.tensor([123456789012345, 7, 5])
    bias, gamma, beta = params
    got = kernels.cuda_forward(z, bias, gamma, beta, rng, p, 1e-3, 0.3, act_first, pre)
    as_cpu = lambda t: t.to(cpu_dtype)  # noqa: E731
    want = kernels.cpu_forward(as_cpu(z), as_cpu(bias), as_cpu(gamma), as_cpu(beta), rng, p, 1e-3, 0.3, act_first,
                               pre)
    got_b = kernels.cuda_backward(*grads, got[0], gamma, beta, got[3], got[4], rng, p, 0.3, act_first)
    want_b = kernels.cpu_backward(*map(as_cpu, grads), want[0], as_cpu(gamma), as_cpu(beta), want[3], want[4], rng, p,
                                  0.3, act_first)
    names = ["z", "out", "pre", "mean", "std", "grad_z", "a_out", "dgamma", "dbeta", "dbias"]
    return zip(names, [*got, *got_b], [*want, *want_b])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows, cols", CASE_SHAPES)
def test_emulated_cuda_block_kernels_match_cpu_passes(kernels, rows, cols, dtype):
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for act_first, bias, pre, p, extra in FLAGS:
        z, params, grads = block_inputs(rows, cols, dtype, bias, extra)
        for name, a, b in run_both(kernels, z, params, grads, p, act_first, pre, dtype):
            scale = max(b.abs().max().item(), 1.0) if b.numel() else 1.0  # gradients: relative to their size
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: (
                f"{name} (act_first={act_first}, bias={bias}, pre={pre}, p={p}, extra={extra}): {m}"))


@pytest.mark.parametrize("dtype", HALF_TOLERANCE)
@pytest.mark.parametrize("act_first", [True, False])
def test_emulated_half_precision_kernels_match_float32_cpu_passes(kernels, act_first, dtype):
    z, params, grads = block_inputs(129, 50, dtype, act_first, True)
    tol = HALF_TOLERANCE[dtype]
    for name, a, b in run_both(kernels, z, params, grads, 0.5, act_first, True, torch.float32):
        assert name not in ("mean", "std") or a.dtype == torch.float32, f"{name} statistics in float32"
        scale = max(b.abs().max().item(), 1.0)
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * scale, msg=lambda m: f"{dtype} {name}: {m}")


def expected_sums(x, y, x_hat, y_hat, hx, hy, cx, cy, cxy, ex, ey, weights, gammas, midway_log=False):
    """The kernel's sums (csrc/loss_terms.h's sum order) in float64 torch (the midway sum 0 in the log form,
    which takes column sums instead)."""
    d = lambda t: t.double()  # noqa: E731
    square = lambda t: d(t).pow(2).sum()  # noqa: E731
    midway = torch.zeros((), dtype=torch.float64) if midway_log else square(d(hx) - d(hy))
    return torch.stack([square(d(x) - d(x_hat)), square(d(y) - d(y_hat)), midway, square(cx),
                        square(cx.diagonal()), square(cy), square(cy.diagonal()),
                        sum(square(t) for t in [*weights, *gammas]), sum(d(g).pow(-2).sum() for g in gammas),
                        square(cxy), square(cxy.diagonal()), d(ex).sum(), d(ex).diagonal().sum(), d(ey).sum(),
                        d(ey).diagonal().sum()])


def cross_matrix(hx_dec, hy_dec, correlation=False):
    """The op's Cxy = Hx^T Hy / B of the decorrelation inputs (float32 for half and bfloat16)."""
    form = "correlation" if correlation else "second_moment"
    a, b = (reference.standardised(h.float() if h.dtype in HALF_TOLERANCE else h, form, 1e-5) for h in (hx_dec, hy_dec))
    return a.T @ b / a.shape[0]


def gaps(h_dec):
    """The op's uniformity matrix E = exp(4 (U U^T - 1)) of a decorrelation input (float32 for half and
    bfloat16)."""
    h = h_dec.float() if h_dec.dtype in HALF_TOLERANCE else h_dec
    u = torch.nn.functional.normalize(h - h.mean(1, keepdim=True), dim=1, eps=1e-12)
    return torch.exp(4 * (u @ u.T - 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("midway_log", [False, True])
@pytest.mark.parametrize("batch, dx, dy, k, correlation", [(2, 7, 1, 4, False), (129, 392, 1000, 50, True),
                                                           (3, 5, 2, 5, True), (257, 40, 9, 70, False)])
def test_emulated_loss_kernels_match_cpu_op(loss_kernels, batch, dx, dy, k, correlation, midway_log, dtype):
    out, x, y, weights, gammas = loss_inputs(batch, dx, dy, k, dtype, blocks=k % 2 == 0)
    out, weights, gammas = [t.detach() for t in out], [w.detach() for w in weights], [g.detach() for g in gammas]
    coefficients = list(COEFFICIENTS.values())
    terms, cx, cy = ops.twoway_loss(x, y, *out, weights, gammas, coefficients, options(midway_log, correlation),
                                    1e-5)  # the CPU op
    cxy, ex, ey = cross_matrix(out[4], out[5], correlation), gaps(out[4]), gaps(out[5])
    sums, got, _ = loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas, coefficients,
                                          options(midway_log, False), 0)
    want = expected_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas, midway_log)
    torch.testing.assert_close(sums, want, rtol=1e-12, atol=1e-12)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, terms, rtol=tol, atol=tol)


def test_emulated_loss_kernels_with_more_tiles_than_blocks(loss_kernels):
    """Three thread blocks over a table of many tiles (8192 elements each): each block walks several
    tiles and segments, as the kernel's 256 blocks do once a table passes 256 tiles."""
    out, x, y, weights, gammas = loss_inputs(129, 392, 1000, 50, torch.float32, blocks=True)
    out, gammas = [t.detach() for t in out], [g.detach() for g in gammas]
    weights = [w.detach() for w in weights] + [torch.empty(0, 7), torch.randn(300, 200)]  # an empty segment too
    cx, cy = (h.T @ h / h.shape[0] for h in out[2:4])
    cxy, ex, ey = cross_matrix(out[2], out[3]), gaps(out[2]), gaps(out[3])
    sums, _, table_blocks = loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas,
                                                   list(COEFFICIENTS.values()), 0, 3)
    assert table_blocks > 3 * 4, "the table has several tiles per block"
    torch.testing.assert_close(sums, expected_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas), rtol=1e-12,
                               atol=1e-12)


def test_emulated_loss_kernels_sum_a_deep_network_and_refuse_a_deeper_one(loss_kernels):
    """20 hidden positions (21 weights, 40 gammas: 114 segments, past the 4 KB of kernel arguments that
    bounded the table before CUDA 12.1) sum as they should; a table past its 256 segments is refused by
    name, not overrun."""
    out, x, y, _, _ = loss_inputs(33, 12, 10, 6, torch.float64)
    out = [t.detach() for t in out]
    weights = [torch.randn(7, 5, dtype=torch.float64) for _ in range(21)]
    gammas = [torch.rand(7, dtype=torch.float64) + 0.5 for _ in range(40)]
    cx, cy = (h.T @ h / h.shape[0] for h in out[2:4])
    cxy, ex, ey = cross_matrix(out[2], out[3]), gaps(out[2]), gaps(out[3])
    sums, _, _ = loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas,
                                        list(COEFFICIENTS.values()), 0, 3)
    torch.testing.assert_close(sums, expected_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(RuntimeError, match="at most 256 summed tensors"):
        loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights * 12, gammas,
                               list(COEFFICIENTS.values()), 0, 3)


@pytest.mark.parametrize("dtype", HALF_TOLERANCE)
def test_emulated_half_precision_loss_kernels_match_float32_reference(loss_kernels, dtype):
    out, x, y, weights, gammas = loss_inputs(129, 392, 1000, 50, torch.float32, blocks=True)
    half = lambda ts: [t.detach().to(dtype) for t in ts]  # noqa: E731
    out, (x, y), weights, gammas = half(out), half([x, y]), half(weights), half(gammas)
    cx, cy = (h.float().T @ h.float() / h.shape[0] for h in out[2:4])  # the op's C: float32
    cxy, ex, ey = cross_matrix(out[2], out[3]), gaps(out[2]), gaps(out[3])
    sums, got, _ = loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas,
                                          list(COEFFICIENTS.values()),
                                          0, 0)
    assert got.dtype == torch.float32  # terms in float32: this weight decay passes float16's range
    torch.testing.assert_close(sums, expected_sums(x, y, *out[:4], cx, cy, cxy, ex, ey, weights, gammas), rtol=1e-12,
                               atol=1e-12)
    f = lambda ts: [t.float() for t in ts]  # noqa: E731
    want = reference.loss(reference.TwoWayOutput(*f(out)), x.float(), y.float(), f(weights), f(gammas),
                          **COEFFICIENTS, decorrelation_form="second_moment", decorrelation_eps=1e-5)
    torch.testing.assert_close(got, torch.stack(list(want)), rtol=1e-5, atol=0)  # both from the same values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (9, 70), (257, 50)])  # partial blocks; stripes unfilled
def test_emulated_midway_column_sums_match_torch(loss_kernels, rows, cols, dtype):
    torch.manual_seed(rows + cols)
    a, b = torch.randn(rows, cols).to(dtype), torch.randn(rows, cols).to(dtype)
    want = (a.double() - b.double()).pow(2).sum(0)  # from the same (rounded) values: only the order differs
    torch.testing.assert_close(loss_kernels.column_sums(a, b), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", HALF_TOLERANCE)
def test_emulated_half_precision_log_midway_matches_float32_reference(loss_kernels, dtype):
    out, x, y, weights, gammas = loss_inputs(129, 40, 30, 50, torch.float32, blocks=True)
    half = lambda ts: [t.detach().to(dtype) for t in ts]  # noqa: E731
    out, (x, y), weights, gammas = half(out), half([x, y]), half(weights), half(gammas)
    cx, cy = (h.float().T @ h.float() / h.shape[0] for h in out[2:4])
    _, got, _ = loss_kernels.loss_sums(x, y, *out[:4], cx, cy, cross_matrix(out[2], out[3]), gaps(out[2]),
                                       gaps(out[3]), weights, gammas,
                                       list(COEFFICIENTS.values()),
                                       options(True, False), 0)
    f = lambda ts: [t.float() for t in ts]  # noqa: E731
    want = reference.loss(reference.TwoWayOutput(*f(out)), x.float(), y.float(), f(weights), f(gammas),
                          **COEFFICIENTS, midway_form="log")
    torch.testing.assert_close(got, torch.stack(list(want)), rtol=1e-5, atol=1e-5)
