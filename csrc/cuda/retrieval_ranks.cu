// CUDA counting pass of retrieval_ranks (the tile loop and the GEMM, at::mm on the current stream, are
// in retrieval_ranks.h): one thread block per block row; thread 0 finds the best match, every thread
// counts a strided slice of the row, then a block reduction.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "retrieval_ranks.h"

namespace twoway_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void count_block_kernel(const T* __restrict__ scores, int64_t width, int64_t row0,
                                   const int64_t* __restrict__ weight, const int64_t* __restrict__ ptr,
                                   const int64_t* __restrict__ idx, int64_t* __restrict__ ranks) {
  const int64_t r = blockIdx.x;
  const T* s = scores + r * width;
  const int64_t m0 = ptr[row0 + r], m1 = ptr[row0 + r + 1];
  __shared__ T best_shared;
  if (threadIdx.x == 0) {
    T best = s[idx[m0]];
    for (int64_t k = m0 + 1; k < m1; ++k) {
      const T v = s[idx[k]];
      if (v > best || isnan(v)) best = v;  // a NaN among the matches makes the query fail
    }
    best_shared = best;
  }
  __syncthreads();
  const T best = best_shared;
  long long at_least = 0;  // original candidates with !(s < best), the matches at best included
  for (int64_t c = threadIdx.x; c < width; c += kThreads) at_least += s[c] < best ? 0 : weight[c];
  for (int64_t k = m0 + threadIdx.x; k < m1; k += kThreads) at_least -= !(s[idx[k]] < best);
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const long long total = Reduce(temp).Sum(at_least);
  if (threadIdx.x == 0) ranks[r] = 1 + total;
}

std::tuple<at::Tensor, at::Tensor> retrieval_ranks_cuda(const at::Tensor& a, const at::Tensor& b,
                                                        const at::Tensor& group, int64_t tile_rows) {
  TORCH_CHECK(a.is_cuda(), "retrieval_ranks (CUDA kernel): expected CUDA tensors, got ", a.device());
  const c10::cuda::CUDAGuard guard(a.device());
  auto count = [](const Block& block, const Candidates& cand, at::Tensor ranks) {
    const int64_t rows = block.scores.size(0);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(block.scores.scalar_type(), "retrieval_ranks_cuda", [&] {
      count_block_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
          block.scores.data_ptr<scalar_t>(), block.scores.size(1), block.row0, cand.weight.data_ptr<int64_t>(),
          cand.ptr.data_ptr<int64_t>(), cand.idx.data_ptr<int64_t>(), ranks.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  return retrieval_ranks_tiled(a, b, group, tile_rows, count);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) { m.impl("retrieval_ranks", &retrieval_ranks_cuda); }

}  // namespace twoway_fast
