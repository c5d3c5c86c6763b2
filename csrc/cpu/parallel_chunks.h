// How the CPU passes (block_forward.h, block_backward.h, dropout_multipliers.h and the loss op's sums) are
// cut into tasks: column chunks of at most kBlockChunk, and no parallel region below kParallelMinElements.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace twoway_fast {

// Most columns per task: wide enough that a row's loop amortises its setup and that the rows of a
// mnist-sized layer (392) are read as one stream, small enough that the per-column sums stay in L1.
constexpr int64_t kBlockChunk = 512;

// Elements below which a pass runs on the calling thread: a parallel region costs more than it saves
// on a small layer, and much more when other processes hold the cores (a descheduled worker stalls
// the region's barrier). 2^14: the mnist preset's 128 x 392 layers split across two cores.
constexpr int64_t kParallelMinElements = 1 << 14;

// at::parallel_for's grain for `tasks` tasks of `per_task` elements each.
inline int64_t grain_for(int64_t per_task) {
  return std::max<int64_t>(1, kParallelMinElements / std::max<int64_t>(per_task, 1));
}

// Column-chunk width of a (rows, cols) pass: at most kBlockChunk, a multiple of 16 (a cache line of
// floats), and when the pass runs in parallel, narrow enough that the threads get equal shares (not
// inside a parallel region, such as the network op's channels side by side: there it runs inline).
inline int64_t chunk_width(int64_t rows, int64_t cols) {
  if (cols <= 0) return kBlockChunk;  // nothing to cut (the ops refuse zero widths; this keeps tasks > 0)
  int64_t tasks = (cols + kBlockChunk - 1) / kBlockChunk;
  if (rows * cols >= kParallelMinElements && !at::in_parallel_region()) {
    const int64_t threads = at::get_num_threads();
    tasks = (tasks + threads - 1) / threads * threads;
  }
  return std::min(kBlockChunk, ((cols + tasks - 1) / tasks + 15) / 16 * 16);
}

}  // namespace twoway_fast
