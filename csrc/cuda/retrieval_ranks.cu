// CUDA kernels of retrieval_ranks (the rule, the bound and the tile loop, at::mm on the current
// stream, are in retrieval_ranks.h): dot64, and the counting pass over one block: one thread block per
// row for a -> b ranks, one thread per (column, slice of rows) for b -> a counts.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "retrieval_ranks.h"

namespace twoway_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerSlice = 64;  // rows of the block one b -> a thread walks

// The scores that count: float64, one fixed order, one function body (noinline), whichever kernel
// calls it: identical rows, identical scores. Products of float32 values are exact in float64.
template <typename T>
__device__ __noinline__ double dot64(const T* x, const T* y, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) s = __fma_rn(static_cast<double>(x[k]), static_cast<double>(y[k]), s);
  return s;
}

template <typename T>
__global__ void true_scores_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                   const int64_t* __restrict__ group, int64_t m, int64_t d,
                                   double* __restrict__ out) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < m) out[j] = dot64(a + group[j] * d, b + j * d, d);
}

// a -> b, one thread block per block row: scores above hi count, below lo do not, near-ties go to
// dot64 (a match never scores above hi, so only near-ties need the match test).
template <typename T>
__global__ void rows_kernel(const T* __restrict__ S, int64_t m, int64_t d, int64_t row0, const T* __restrict__ a,
                            const T* __restrict__ b, const int64_t* __restrict__ group,
                            const int64_t* __restrict__ per_a, const double* __restrict__ best_a,
                            const T* __restrict__ hi_a, const T* __restrict__ lo_a, int64_t* __restrict__ ranks) {
  const int64_t r = blockIdx.x, i = row0 + r;
  const double best = best_a[i];
  if (isnan(best)) {  // a NaN among the matches: every other candidate counts
    if (threadIdx.x == 0) ranks[r] = 1 + m - per_a[i];
    return;
  }
  const T *s = S + r * m, *ai = a + i * d, hi = hi_a[i], lo = lo_a[i];
  long long above = 0;
  for (int64_t j = threadIdx.x; j < m; j += kThreads) {
    const T v = s[j];
    if (v > hi) ++above;
    else if (!(v < lo) && group[j] != i) above += !(dot64(ai, b + j * d, d) < best);
  }
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const long long total = Reduce(temp).Sum(above);
  if (threadIdx.x == 0) ranks[r] = 1 + total;
}

// b -> a: thread (column j, slice of kRowsPerSlice rows); reads are coalesced along j. A caption's own
// image always lands among the near-ties, where it is skipped.
template <typename T>
__global__ void columns_kernel(const T* __restrict__ S, int64_t rows, int64_t m, int64_t d, int64_t row0,
                               const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ group,
                               const double* __restrict__ true_b, const T* __restrict__ hi_b,
                               const T* __restrict__ lo_b, int64_t* __restrict__ counts) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (j >= m) return;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kRowsPerSlice);
  const int64_t r1 = r0 + kRowsPerSlice < rows ? r0 + kRowsPerSlice : rows;
  const T hi = hi_b[j], lo = lo_b[j];
  const double t = true_b[j];
  unsigned long long above = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T v = S[r * m + j];
    if (v > hi) ++above;
    else if (!(v < lo) && group[j] != row0 + r && !isnan(t))
      above += !(dot64(a + (row0 + r) * d, b + j * d, d) < t);
  }
  if (above) atomicAdd(reinterpret_cast<unsigned long long*>(counts + j), above);
}

at::Tensor true_scores_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group) {
  const int64_t m = b.size(0), d = b.size(1);
  auto out = at::empty({m}, b.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "retrieval_true_scores_cuda", [&] {
    true_scores_kernel<scalar_t><<<(m + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), group.data_ptr<int64_t>(), m, d, out.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void count_cuda(const at::Tensor& block, int64_t row0, const Prepared& p, at::Tensor ranks_a, at::Tensor& counts_b) {
  const int64_t rows = block.size(0), m = block.size(1), d = p.a.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(block.scalar_type(), "retrieval_ranks_cuda", [&] {
    rows_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        block.data_ptr<scalar_t>(), m, d, row0, p.a.data_ptr<scalar_t>(), p.b.data_ptr<scalar_t>(),
        p.group.data_ptr<int64_t>(), p.per_a.data_ptr<int64_t>(), p.best_a.data_ptr<double>(),
        p.hi_a.data_ptr<scalar_t>(), p.lo_a.data_ptr<scalar_t>(), ranks_a.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid((m + kThreads - 1) / kThreads, (rows + kRowsPerSlice - 1) / kRowsPerSlice);
    columns_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        block.data_ptr<scalar_t>(), rows, m, d, row0, p.a.data_ptr<scalar_t>(), p.b.data_ptr<scalar_t>(),
        p.group.data_ptr<int64_t>(), p.true_b.data_ptr<double>(), p.hi_b.data_ptr<scalar_t>(),
        p.lo_b.data_ptr<scalar_t>(), counts_b.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

RanksResult retrieval_ranks_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group,
                                 int64_t tile_rows) {
  TORCH_CHECK(a.is_cuda(), "retrieval_ranks (CUDA kernel): expected CUDA tensors, got ", a.device());
  const c10::cuda::CUDAGuard guard(a.device());
  return retrieval_ranks_tiled(a, b, group, tile_rows, true_scores_cuda, count_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) { m.impl("retrieval_ranks", &retrieval_ranks_cuda); }

}  // namespace twoway_fast
