// A host emulation of the parts of the CUDA execution model that csrc/cuda/fused_block.cuh uses, so
// its kernels run on a machine without a GPU (tests/test_cuda_block_emulation.py): each thread of a
// block is a std::thread, __syncthreads is a std::barrier over the block's threads, __shared__ is a
// static (blocks run one after another), and threadIdx/blockIdx are thread-local. A thread that
// returned before a barrier the others reach would deadlock the run, as it would be a bug on a GPU.
#pragma once
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }

// kernel<<<grid, block>>>(...) as emulate_launch(grid, block, [&] { kernel(...); }) (1-D grids, 2-D blocks).
template <typename Body>
void emulate_launch(dim3 grid, dim3 block, Body body) {
  for (unsigned b = 0; b < grid.x; ++b) {
    const unsigned threads = block.x * block.y;
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> running;
    for (unsigned t = 0; t < threads; ++t)
      running.emplace_back([&, t, b] {
        threadIdx = dim3(t % block.x, t / block.x);
        blockIdx = dim3(b);
        body();
      });
    for (auto& thread : running) thread.join();
  }
}
