"""The CUDA block kernels (csrc/cuda/fused_block.cuh: the network op's and the hidden block's passes)
run on the CPU under a host emulation of the CUDA execution model (tests/cuda_emulation/: one
std::thread per CUDA thread, a std::barrier for __syncthreads) and compared with the CPU passes
(csrc/cpu/fused_block.h) on the same arguments: every flag combination, shapes with partial 4-column
groups and partial thread blocks, float64 and float32 tight, bfloat16/float16 against float32 within a
stated tolerance. What this checks on a machine without a GPU: the kernels' index math, the one
Philox draw per 4 columns, the column sums across row stripes and the barrier structure. What it
cannot: anything of the GPU itself (memory model, warp scheduling, launch limits); the CUDA tests
(tests/test_cuda_ops.py) do that on a GPU."""
import itertools
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CASE_SHAPES = [(2, 1), (3, 7), (17, 64), (33, 130)]  # 1 column; a partial 4-group; one block; 3 blocks
FLAGS = [(act_first, bias, pre, p, extra)
         for act_first, bias, pre, p, extra in itertools.product([True, False], [True, False], [True, False],
                                                                 [0.0, 0.5], [True, False])
         if act_first or not bias]  # the network op passes a bias only in act_first order
HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}  # relative to the largest entry (at least 1)


@pytest.fixture(scope="module")
def kernels():
    build = ROOT / "build" / "cuda-emulation"
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load("twoway_cuda_block_emulation", [str(ROOT / "tests/cuda_emulation/block_kernels.cpp")],
                              extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "tests/cuda_emulation")],
                              extra_cflags=["-std=c++20", "-O1", "-pthread"], extra_ldflags=["-pthread"],
                              build_directory=str(build))


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
