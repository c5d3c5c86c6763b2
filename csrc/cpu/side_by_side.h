// Two tasks side by side on the CPU: the two channels of a 2-Way Net are independent until their
// weight gradients meet, so the network and loss ops run each channel's work on its own thread.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <vector>

namespace twoway_fast {

// Runs f(0) and f(1) side by side, one thread each, when the op has two threads, else one after the
// other. One thread per channel, its GEMMs and passes single-threaded inside the region, beats
// splitting every small GEMM and pass over both threads (benchmarks/HISTORY.md). With more threads
// the GEMMs' own parallelism is kept (not measured here: two cores).
template <typename F>
void side_by_side(const F& f) {
  if (at::get_num_threads() != 2) {
    f(0), f(1);
    return;
  }
  // A worker starts with default thread-local state: without the caller's (autograd keys excluded
  // inside an op), the ATen calls in f would dispatch through autograd again.
  const at::ThreadLocalState caller;
  at::parallel_for(0, 2, 1, [&](int64_t t0, int64_t t1) {
    const at::ThreadLocalStateGuard guard(caller);
    for (int64_t t = t0; t < t1; ++t) f(static_cast<int>(t));
  });
}

// Indices 0..sizes.size()-1 shared out between two threads, largest first to the less loaded one.
inline std::array<std::vector<int64_t>, 2> split_by_size(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
  std::array<std::vector<int64_t>, 2> share;
  int64_t load[2] = {0, 0};
  for (int64_t k : order) {
    const int t = load[1] < load[0];
    share[t].push_back(k), load[t] += sizes[k];
  }
  return share;
}

}  // namespace twoway_fast
