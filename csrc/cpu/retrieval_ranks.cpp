// CPU counting pass of retrieval_ranks (the tile loop and the GEMM are in retrieval_ranks.h): one
// task per block row; the row is read once, and the compare-and-count loop vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "retrieval_ranks.h"

namespace twoway_fast {
namespace {

template <typename T>
void count_block(const T* scores, int64_t rows, int64_t width, int64_t row0, const int64_t* weight,
                 const int64_t* ptr, const int64_t* idx, int64_t* ranks) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = scores + r * width;
      const int64_t m0 = ptr[row0 + r], m1 = ptr[row0 + r + 1];
      T best = s[idx[m0]];
      for (int64_t k = m0 + 1; k < m1; ++k) {
        const T v = s[idx[k]];
        if (v > best || std::isnan(v)) best = v;  // a NaN among the matches makes the query fail
      }
      int64_t at_least = 0;  // original candidates with !(s < best): the matches at best are among them
      for (int64_t c = 0; c < width; ++c) at_least += s[c] < best ? 0 : weight[c];
      for (int64_t k = m0; k < m1; ++k) at_least -= !(s[idx[k]] < best);
      ranks[r] = 1 + at_least;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> retrieval_ranks_cpu(const at::Tensor& a, const at::Tensor& b,
                                                       const at::Tensor& group, int64_t tile_rows) {
  TORCH_CHECK(a.device().is_cpu(), "retrieval_ranks (CPU kernel): expected CPU tensors, got ", a.device());
  auto count = [](const Block& block, const Candidates& cand, at::Tensor ranks) {
    AT_DISPATCH_FLOATING_TYPES(block.scores.scalar_type(), "retrieval_ranks_cpu", [&] {
      count_block<scalar_t>(block.scores.data_ptr<scalar_t>(), block.scores.size(0), block.scores.size(1),
                            block.row0, cand.weight.data_ptr<int64_t>(), cand.ptr.data_ptr<int64_t>(),
                            cand.idx.data_ptr<int64_t>(), ranks.data_ptr<int64_t>());
    });
  };
  return retrieval_ranks_tiled(a, b, group, tile_rows, count);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) { m.impl("retrieval_ranks", &retrieval_ranks_cpu); }

}  // namespace twoway_fast
