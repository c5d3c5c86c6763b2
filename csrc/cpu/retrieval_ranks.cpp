// CPU kernels of retrieval_ranks (the rule, the bound and the tile loop are in retrieval_ranks.h):
// dot64, and the counting pass over one block, rows (a -> b ranks) then columns (b -> a counts).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "retrieval_ranks.h"

namespace twoway_fast {
namespace {

// The scores that count: float64, one fixed order, one function body (noinline, and no fast-math, so
// the compiler can neither reorder nor compile two call sites differently): identical rows, identical
// scores. Products of float32 values are exact in float64.
template <typename T>
__attribute__((noinline)) double dot64(const T* x, const T* y, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) s += static_cast<double>(x[k]) * static_cast<double>(y[k]);
  return s;
}

at::Tensor true_scores_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group) {
  const int64_t m = b.size(0), d = b.size(1);
  auto out = at::empty({m}, b.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "retrieval_true_scores_cpu", [&] {
    const scalar_t *pa = a.data_ptr<scalar_t>(), *pb = b.data_ptr<scalar_t>();
    const int64_t* g = group.data_ptr<int64_t>();
    double* o = out.data_ptr<double>();
    at::parallel_for(0, m, 256, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) o[j] = dot64(pa + g[j] * d, pb + j * d, d);
    });
  });
  return out;
}

template <typename T>
void count_block(const at::Tensor& block, int64_t row0, const Prepared& p, int64_t* ranks_a, int64_t* counts_b) {
  const int64_t rows = block.size(0), m = block.size(1), d = p.a.size(1);
  const T *S = block.data_ptr<T>(), *a = p.a.data_ptr<T>(), *b = p.b.data_ptr<T>();
  const int64_t *group = p.group.data_ptr<int64_t>(), *per_a = p.per_a.data_ptr<int64_t>();
  const double *best_a = p.best_a.data_ptr<double>(), *true_b = p.true_b.data_ptr<double>();
  const T *hi_a = p.hi_a.data_ptr<T>(), *lo_a = p.lo_a.data_ptr<T>();
  const T *hi_b = p.hi_b.data_ptr<T>(), *lo_b = p.lo_b.data_ptr<T>();

  // a -> b: block scores above hi count, below lo do not, the rest are near-ties for dot64. A match
  // never scores above hi (its dot64 is at most best), so only the near-ties need the match test.
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = row0 + r;
      const double best = best_a[i];
      if (std::isnan(best)) {  // a NaN among the matches: every other candidate counts
        ranks_a[r] = 1 + m - per_a[i];
        continue;
      }
      const T *s = S + r * m, *ai = a + i * d, hi = hi_a[i], lo = lo_a[i];
      int64_t above = 0;
      for (int64_t j = 0; j < m; ++j) {
        const T v = s[j];
        if (v > hi) ++above;
        else if (!(v < lo) && group[j] != i) above += !(dot64(ai, b + j * d, d) < best);
      }
      ranks_a[r] = 1 + above;
    }
  });

  // b -> a: each task owns a range of columns and walks the block's rows, so no two tasks share a
  // counter. A caption's own image always lands among the near-ties, where it is skipped.
  at::parallel_for(0, m, 1024, [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row0 + r;
      const T *s = S + r * m, *ai = a + i * d;
      for (int64_t j = j0; j < j1; ++j) {
        const T v = s[j];
        if (v > hi_b[j]) ++counts_b[j];
        else if (!(v < lo_b[j]) && group[j] != i && !std::isnan(true_b[j]))
          counts_b[j] += !(dot64(ai, b + j * d, d) < true_b[j]);
      }
    }
  });
}

RanksResult retrieval_ranks_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group,
                                int64_t tile_rows) {
  TORCH_CHECK(a.device().is_cpu(), "retrieval_ranks (CPU kernel): expected CPU tensors, got ", a.device());
  auto count = [](const at::Tensor& block, int64_t row0, const Prepared& p, at::Tensor ranks_a,
                  at::Tensor& counts_b) {
    AT_DISPATCH_FLOATING_TYPES(block.scalar_type(), "retrieval_ranks_cpu", [&] {
      count_block<scalar_t>(block, row0, p, ranks_a.data_ptr<int64_t>(), counts_b.data_ptr<int64_t>());
    });
  };
  return retrieval_ranks_tiled(a, b, group, tile_rows, true_scores_cpu, count);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) { m.impl("retrieval_ranks", &retrieval_ranks_cpu); }

}  // namespace twoway_fast
