// The per-layer passes of the fused ops on CUDA, used by the network op (twoway_net.cu) and the
// standalone hidden block (hidden_block.cu): the CUDA twin of csrc/cpu/block_forward.h and
// block_backward.h, same math in the same order. One kernel per hidden block forward (finish the batch statistics of a GEMM output,
// apply BN, gamma/beta, LeakyReLU and the tied dropout) and one backward (a column reduction, then the
// input gradient, rebuilding the block's output for the weight-gradient GEMM).
// Layout: a thread owns 4 consecutive columns, the 4 that one Philox4x32-10 draw covers (philox.h), so
// each draw is made once per row; a thread block is kGroups such threads across (64 columns) by
// kRowStripes down, and column sums go through shared memory in double. Elementwise math runs in
// acc_t<T> (float for float, half and bfloat16; double for double). The mask is regenerated from
// rng_state, read only on the device, so nothing synchronises with the host and a step can be
// captured in a CUDA graph.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "philox.h"

namespace twoway_fast {

template <typename T>
using acc_t = at::opmath_type<T>;  // float for half and bfloat16, else T

constexpr int kGroups = 16;      // threads across a block, 4 columns each
constexpr int kRowStripes = 16;  // threads down a block, each visiting every kRowStripes-th row
constexpr int kBlockCols = 4 * kGroups;

inline dim3 block_grid(int64_t cols) { return dim3(static_cast<unsigned>((cols + kBlockCols - 1) / kBlockCols)); }
inline dim3 block_threads() { return dim3(kGroups, kRowStripes); }

template <typename A>
__device__ __forceinline__ A slope(A v, A leak) {
  return v > A(0) ? A(1) : leak;
}

template <typename A>
__device__ __forceinline__ A leaky(A v, A leak) {
  return v * slope(v, leak);
}

// The thread's 4 columns: first is a multiple of 4 (so first / 4 is the Philox counter's column
// word), count how many of them exist (<= 0 for a thread past the last column).
struct Columns {
  int64_t first;
  int64_t count;
};

__device__ __forceinline__ Columns thread_columns(int64_t cols) {
  const int64_t first = 4 * (static_cast<int64_t>(blockIdx.x) * kGroups + threadIdx.x);
  return {first, cols - first};
}

// The dropout multipliers of the thread's 4 columns in one row, from one Philox draw: the kept scale
// or 0, and 1 when nothing is dropped.
template <typename A>
__device__ __forceinline__ void dropout_factors(const DropoutMask& mask, A scale, int64_t row, int64_t first,
                                                A m[4]) {
  bool keep[4];
  mask.four(row, first >> 2, keep);  // all kept when the mask is inactive
  for (int j = 0; j < 4; ++j) m[j] = !mask.active ? A(1) : keep[j] ? scale : A(0);
}

// Sums over the block's row stripes of each thread's 4 values, one per column; every thread gets its
// columns' totals in place. Every thread of the block must call it (it synchronises).
__device__ __forceinline__ void column_sums(double v[4], double (*shared)[kBlockCols]) {
  for (int j = 0; j < 4; ++j) shared[threadIdx.y][4 * threadIdx.x + j] = v[j];
  __syncthreads();
  for (int j = 0; j < 4; ++j) {
    double total = 0;
    for (int k = 0; k < kRowStripes; ++k) total += shared[k][4 * threadIdx.x + j];
    v[j] = total;
  }
  __syncthreads();
}

// block_forward.h's block_forward: bias (nullptr unless act_first) is added to z in place; writes out,
// pre (nullptr: not wanted) and the batch mean and std = sqrt(var_biased + eps) of the BN input, in
// acc_t<T> (float for half and bfloat16, so backward normalises exactly as forward did). Each thread
// only touches its own columns' elements, so the in-place add needs no barrier.
template <typename T>
__global__ void block_forward_kernel(T* __restrict__ z, const T* __restrict__ bias, const T* __restrict__ gamma,
                                     const T* __restrict__ beta, const int64_t* __restrict__ rng,
                                     T* __restrict__ out, T* __restrict__ pre, acc_t<T>* __restrict__ mean_out,
                                     acc_t<T>* __restrict__ std_out, int64_t rows, int64_t cols, double p,
                                     double eps, double leak_in, bool act_first) {
  using A = acc_t<T>;
  __shared__ double shared[kRowStripes][kBlockCols];
  const Columns cs = thread_columns(cols);
  const A leak = static_cast<A>(leak_in);
  auto input = [&](int64_t o) {
    const A v = static_cast<A>(z[o]);
    return act_first ? leaky(v, leak) : v;
  };
  double sum[4] = {0, 0, 0, 0};
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes)
    for (int j = 0; j < 4; ++j) {
      if (j >= cs.count) break;
      const int64_t o = r * cols + cs.first + j;
      if (bias != nullptr) z[o] = static_cast<T>(static_cast<A>(z[o]) + static_cast<A>(bias[cs.first + j]));
      sum[j] += input(o);
    }
  column_sums(sum, shared);
  double mean[4], squares[4] = {0, 0, 0, 0};  // two passes: exact even when the mean dwarfs the spread
  for (int j = 0; j < 4; ++j) mean[j] = sum[j] / rows;
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes)
    for (int j = 0; j < 4; ++j) {
      if (j >= cs.count) break;
      const double d = input(r * cols + cs.first + j) - mean[j];
      squares[j] += d * d;
    }
  column_sums(squares, shared);
  if (cs.count <= 0) return;
  A mean_a[4], scale[4], shift[4];
  for (int j = 0; j < 4; ++j) {
    if (j >= cs.count) break;
    const int64_t c = cs.first + j;
    const double s = sqrt(squares[j] / rows + eps);
    mean_a[j] = static_cast<A>(mean[j]);
    scale[j] = static_cast<A>(static_cast<double>(gamma[c]) / s);
    shift[j] = static_cast<A>(beta[c]);
    if (threadIdx.y == 0) {
      mean_out[c] = mean_a[j];
      std_out[c] = static_cast<A>(s);
    }
  }
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const A drop_scale = static_cast<A>(static_cast<T>(mask.scale));  // rounded to the activations' dtype
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
    A m[4];
    dropout_factors(mask, drop_scale, r, cs.first, m);
    for (int j = 0; j < 4; ++j) {
      if (j >= cs.count) break;
      const int64_t o = r * cols + cs.first + j;
      A v = (input(o) - mean_a[j]) * scale[j] + shift[j];
      if (!act_first) v = leaky(v, leak);
      if (pre != nullptr) pre[o] = static_cast<T>(v);
      out[o] = static_cast<T>(v * m[j]);
    }
  }
}

// block_backward.h's block_backward: g_extra and g_pre (the representation's direct gradients, after and
// before dropout) are both set or both nullptr; a_out (the rebuilt output) and dbias (the column sums
// of grad_z, written only in act_first order) may be nullptr. grad_z first holds the gradient at the
// BN output (each thread rereads only its own elements).
template <typename T>
__global__ void block_backward_kernel(const T* __restrict__ g_out, const T* __restrict__ g_extra,
                                      const T* __restrict__ g_pre, const T* __restrict__ z,
                                      const T* __restrict__ gamma, const T* __restrict__ beta,
                                      const acc_t<T>* __restrict__ mean_in, const acc_t<T>* __restrict__ std_in,
                                      const int64_t* __restrict__ rng, T* __restrict__ grad_z, T* __restrict__ a_out,
                                      T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ dbias,
                                      int64_t rows, int64_t cols, double p, double leak_in, bool act_first) {
  using A = acc_t<T>;
  __shared__ double shared[kRowStripes][kBlockCols];
  const Columns cs = thread_columns(cols);
  const A leak = static_cast<A>(leak_in);
  A mean[4] = {0, 0, 0, 0}, rstd[4] = {0, 0, 0, 0}, g[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  for (int j = 0; j < 4; ++j) {
    if (j >= cs.count) break;
    const int64_t c = cs.first + j;
    mean[j] = mean_in[c], rstd[j] = A(1) / std_in[c];
    g[j] = static_cast<A>(gamma[c]), b[j] = static_cast<A>(beta[c]);
  }
  auto xhat = [&](int64_t o, int j) {
    const A v = static_cast<A>(z[o]);
    return ((act_first ? leaky(v, leak) : v) - mean[j]) * rstd[j];
  };
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const A drop_scale = static_cast<A>(static_cast<T>(mask.scale));
  double sum_g[4] = {0, 0, 0, 0}, sum_gx[4] = {0, 0, 0, 0};
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
    A m[4];
    dropout_factors(mask, drop_scale, r, cs.first, m);
    for (int j = 0; j < 4; ++j) {
      if (j >= cs.count) break;
      const int64_t o = r * cols + cs.first + j;
      const A xh = xhat(o, j);
      const A y = g[j] * xh + b[j];
      A gy = static_cast<A>(g_out[o]);
      if (g_extra != nullptr) gy += static_cast<A>(g_extra[o]);
      gy *= m[j];
      if (g_extra != nullptr) gy += static_cast<A>(g_pre[o]);
      if (!act_first) gy *= slope(y, leak);
      if (a_out != nullptr) a_out[o] = static_cast<T>((act_first ? y : leaky(y, leak)) * m[j]);
      grad_z[o] = static_cast<T>(gy);
      sum_g[j] += gy;
      sum_gx[j] += static_cast<double>(gy) * xh;
    }
  }
  column_sums(sum_g, shared);
  column_sums(sum_gx, shared);
  A k0[4], k1[4], k2[4];  // grad_z = k0 gy - k1 - k2 xhat
  for (int j = 0; j < 4; ++j) {
    k0[j] = g[j] * rstd[j];
    k1[j] = static_cast<A>(k0[j] * sum_g[j] / rows), k2[j] = static_cast<A>(k0[j] * sum_gx[j] / rows);
  }
  double sum_gz[4] = {0, 0, 0, 0};
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes)
    for (int j = 0; j < 4; ++j) {
      if (j >= cs.count) break;
      const int64_t o = r * cols + cs.first + j;
      A gz = k0[j] * static_cast<A>(grad_z[o]) - k1[j] - k2[j] * xhat(o, j);
      if (act_first) gz *= slope(static_cast<A>(z[o]), leak);
      grad_z[o] = static_cast<T>(gz);
      sum_gz[j] += gz;
    }
  if (act_first) column_sums(sum_gz, shared);  // act_first is uniform over the block
  if (threadIdx.y != 0) return;
  for (int j = 0; j < 4; ++j) {
    if (j >= cs.count) break;
    const int64_t c = cs.first + j;
    dbeta[c] = static_cast<T>(sum_g[j]);
    dgamma[c] = static_cast<T>(sum_gx[j]);
    if (act_first && dbias != nullptr) dbias[c] = static_cast<T>(sum_gz[j]);
  }
}

}  // namespace twoway_fast
