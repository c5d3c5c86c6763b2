// The per-layer passes of the fused ops on CUDA, used by the network op (tied_network.cu) and the
// standalone hidden block (hidden_block.cu): the CUDA twin of csrc/cpu/fused_block.h, same math in
// the same order. One kernel per hidden block forward (finish the batch statistics of a GEMM output,
// apply BN, gamma/beta, LeakyReLU and the tied dropout) and one backward (a column reduction, then the
// input gradient, rebuilding the block's output for the weight-gradient GEMM). A thread block owns 32
// columns (a warp reads 32 consecutive elements of a row: coalesced) and 8 row stripes; column sums go
// through shared memory in double. Elementwise math runs in acc_t<T> (float for float, half and
// bfloat16; double for double). The mask is regenerated from rng_state, read only on the device, so
// nothing synchronises with the host and a step can be captured in a CUDA graph.
#pragma once
#include <ATen/ATen.h>

#include "philox.h"

namespace twoway_fast {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

constexpr int kBlockCols = 32;
constexpr int kRowStripes = 8;

inline dim3 block_grid(int64_t cols) { return dim3(static_cast<unsigned>((cols + kBlockCols - 1) / kBlockCols)); }
inline dim3 block_threads() { return dim3(kBlockCols, kRowStripes); }

template <typename A>
__device__ __forceinline__ A slope(A v, A leak) {
  return v > A(0) ? A(1) : leak;
}

template <typename A>
__device__ __forceinline__ A leaky(A v, A leak) {
  return v * slope(v, leak);
}

// Element (row, col)'s dropout multiplier: the kept scale or 0, and 1 when nothing is dropped.
template <typename A>
__device__ __forceinline__ A dropout_factor(const DropoutMask& mask, A scale, int64_t row, int64_t col) {
  if (!mask.active) return A(1);
  bool keep[4];
  mask.four(row, col >> 2, keep);
  return keep[col & 3] ? scale : A(0);
}

// Sum over the block's row stripes of each thread's value, for its column; every thread gets it.
// Every thread of the block must call it (it synchronises).
__device__ __forceinline__ double column_sum(double value, double (*shared)[kBlockCols]) {
  shared[threadIdx.y][threadIdx.x] = value;
  __syncthreads();
  double total = 0;
  for (int k = 0; k < kRowStripes; ++k) total += shared[k][threadIdx.x];
  __syncthreads();
  return total;
}

// fused_block.h's block_forward: bias (nullptr unless act_first) is added to z in place; writes out,
// pre (nullptr: not wanted) and the batch mean and std = sqrt(var_biased + eps) of the BN input.
// Each thread only touches its own column's elements, so the in-place add needs no barrier.
template <typename T>
__global__ void block_forward_kernel(T* __restrict__ z, const T* __restrict__ bias, const T* __restrict__ gamma,
                                     const T* __restrict__ beta, const int64_t* __restrict__ rng,
                                     T* __restrict__ out, T* __restrict__ pre, T* __restrict__ mean_out,
                                     T* __restrict__ std_out, int64_t rows, int64_t cols, double p, double eps,
                                     double leak_in, bool act_first) {
  using A = acc_t<T>;
  __shared__ double shared[kRowStripes][kBlockCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBlockCols + threadIdx.x;
  const bool valid = c < cols;
  const A leak = static_cast<A>(leak_in);
  auto input = [&](int64_t r) {
    const A v = static_cast<A>(z[r * cols + c]);
    return act_first ? leaky(v, leak) : v;
  };
  double sum = 0;
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      if (bias != nullptr) z[r * cols + c] = static_cast<T>(static_cast<A>(z[r * cols + c]) + static_cast<A>(bias[c]));
      sum += input(r);
    }
  const double mean = column_sum(sum, shared) / rows;
  double squares = 0;  // two passes: exact even when the mean dwarfs the spread
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      const double d = input(r) - mean;
      squares += d * d;
    }
  const double s = sqrt(column_sum(squares, shared) / rows + eps);
  if (!valid) return;
  const A mean_a = static_cast<A>(mean), scale = static_cast<A>(static_cast<double>(gamma[c]) / s);
  const A shift = static_cast<A>(beta[c]);
  if (threadIdx.y == 0) {
    mean_out[c] = static_cast<T>(mean);
    std_out[c] = static_cast<T>(s);
  }
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const A drop_scale = static_cast<A>(static_cast<T>(mask.scale));  // rounded to the activations' dtype
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
    const int64_t o = r * cols + c;
    A v = (input(r) - mean_a) * scale + shift;
    if (!act_first) v = leaky(v, leak);
    if (pre != nullptr) pre[o] = static_cast<T>(v);
    out[o] = static_cast<T>(v * dropout_factor(mask, drop_scale, r, c));
  }
}

// fused_block.h's block_backward: g_extra and g_pre (the representation's direct gradients, after and
// before dropout) are both set or both nullptr; a_out (the rebuilt output) and dbias (the column sums
// of grad_z, written only in act_first order) may be nullptr. grad_z first holds the gradient at the
// BN output (each thread rereads only its own elements).
template <typename T>
__global__ void block_backward_kernel(const T* __restrict__ g_out, const T* __restrict__ g_extra,
                                      const T* __restrict__ g_pre, const T* __restrict__ z,
                                      const T* __restrict__ gamma, const T* __restrict__ beta,
                                      const T* __restrict__ mean_in, const T* __restrict__ std_in,
                                      const int64_t* __restrict__ rng, T* __restrict__ grad_z, T* __restrict__ a_out,
                                      T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ dbias,
                                      int64_t rows, int64_t cols, double p, double leak_in, bool act_first) {
  using A = acc_t<T>;
  __shared__ double shared[kRowStripes][kBlockCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBlockCols + threadIdx.x;
  const bool valid = c < cols;
  const A leak = static_cast<A>(leak_in);
  A mean = 0, rstd = 0, g = 0, b = 0;
  if (valid) {
    mean = static_cast<A>(mean_in[c]), rstd = A(1) / static_cast<A>(std_in[c]);
    g = static_cast<A>(gamma[c]), b = static_cast<A>(beta[c]);
  }
  auto xhat = [&](int64_t o) {
    const A v = static_cast<A>(z[o]);
    return ((act_first ? leaky(v, leak) : v) - mean) * rstd;
  };
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const A drop_scale = static_cast<A>(static_cast<T>(mask.scale));
  double sum_g = 0, sum_gx = 0;
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      const int64_t o = r * cols + c;
      const A xh = xhat(o);
      const A y = g * xh + b;
      const A m = dropout_factor(mask, drop_scale, r, c);
      A gy = static_cast<A>(g_out[o]);
      if (g_extra != nullptr) gy += static_cast<A>(g_extra[o]);
      gy *= m;
      if (g_extra != nullptr) gy += static_cast<A>(g_pre[o]);
      if (!act_first) gy *= slope(y, leak);
      if (a_out != nullptr) a_out[o] = static_cast<T>((act_first ? y : leaky(y, leak)) * m);
      grad_z[o] = static_cast<T>(gy);
      sum_g += gy;
      sum_gx += static_cast<double>(gy) * xh;
    }
  sum_g = column_sum(sum_g, shared);
  sum_gx = column_sum(sum_gx, shared);
  const A k0 = g * rstd;  // grad_z = k0 gy - k1 - k2 xhat
  const A k1 = static_cast<A>(k0 * sum_g / rows), k2 = static_cast<A>(k0 * sum_gx / rows);
  double sum_gz = 0;
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      const int64_t o = r * cols + c;
      A gz = k0 * static_cast<A>(grad_z[o]) - k1 - k2 * xhat(o);
      if (act_first) gz *= slope(static_cast<A>(z[o]), leak);
      grad_z[o] = static_cast<T>(gz);
      sum_gz += gz;
    }
  if (act_first) sum_gz = column_sum(sum_gz, shared);  // act_first is uniform over the block
  if (!valid || threadIdx.y != 0) return;
  dbeta[c] = static_cast<T>(sum_g);
  dgamma[c] = static_cast<T>(sum_gx);
  if (act_first && dbias != nullptr) dbias[c] = static_cast<T>(sum_gz);
}

}  // namespace twoway_fast
