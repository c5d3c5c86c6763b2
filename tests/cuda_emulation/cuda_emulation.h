// A host emulation of the parts of the CUDA execution model that csrc/cuda/block_passes.cuh and
// csrc/cuda/loss_sums.cuh use, so their kernels run on a machine without a GPU
// (tests/test_cuda_emulation.py): each thread of a block is a std::thread, __syncthreads is a
// std::barrier over the block's threads, __shared__ is a static (blocks run one after another), and
// threadIdx/blockIdx are thread-local.
#pragma once
#include <barrier>
#include <cmath>
#include <stdexcept>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<double> shuffle_slots;  // one per thread of the running block

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
inline thread_local unsigned syncs_in_block = 0;
inline void __syncthreads() {
  ++syncs_in_block;
  block_barrier->arrive_and_wait();
}

// Lanes are threads of consecutive linear index in groups of 32, as on a GPU; a lane past the warp's
// end gets its own value. Every thread of the block must call it together (true of the kernels here).
template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  const unsigned t = threadIdx.y * blockDim.x + threadIdx.x, lane = t % 32;
  shuffle_slots[t] = static_cast<double>(value);
  __syncthreads();
  const T result = lane + offset < 32 ? static_cast<T>(shuffle_slots[t + offset]) : value;
  __syncthreads();
  return result;
}

// kernel<<<grid, block>>>(...) as emulate_launch(grid, block, [&] { kernel(...); }) (1-D grids, 2-D
// blocks). One std::thread per thread of a block runs every block in turn; a barrier ends each block.
// Each thread counts its __syncthreads per block: different counts (a thread that returned early, or a
// barrier under a divergent branch; a bug on a GPU) end in an error or, when the barrier's phases no
// longer line up, a hang.
template <typename Body>
void emulate_launch(dim3 grid, dim3 block, Body body) {
  gridDim = grid, blockDim = block;
  const unsigned threads = block.x * block.y;
  std::barrier<> barrier(threads);
  block_barrier = &barrier;
  shuffle_slots.assign(threads, 0.0);
  std::vector<unsigned> syncs(threads);
  bool diverged = false;
  std::vector<std::thread> running;
  for (unsigned t = 0; t < threads; ++t)
    running.emplace_back([&, t] {
      threadIdx = dim3(t % block.x, t / block.x);
      for (unsigned b = 0; b < grid.x; ++b) {
        blockIdx = dim3(b);
        syncs_in_block = 0;
        body();
        syncs[t] = syncs_in_block;
        barrier.arrive_and_wait();  // the block is done before any thread starts the next
        if (t == 0)
          for (unsigned other = 1; other < threads; ++other) diverged |= syncs[other] != syncs[0];
        barrier.arrive_and_wait();
      }
    });
  for (auto& thread : running) thread.join();
  if (diverged) throw std::runtime_error("threads of a block passed different numbers of __syncthreads");
}
