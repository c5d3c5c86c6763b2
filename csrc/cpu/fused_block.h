// The per-layer passes of the fused network op (csrc/cpu/tied_network.cpp): one forward pass that
// finishes the batch statistics of a GEMM output and applies BN, gamma/beta, LeakyReLU and the tied
// dropout; one backward pass (a column reduction, then the input gradient) that also rebuilds the
// layer's output for the weight-gradient GEMM, so forward never keeps activations for backward.
// Work is split into column chunks (statistics are per column); inside a chunk rows run outermost and
// the chunk's contiguous columns innermost, so the loops vectorise. Column sums accumulate in double.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>

#include "philox.h"

namespace twoway_fast {

constexpr int64_t kBlockChunk = 64;  // columns per task

template <typename T>
inline T leaky_relu(T v, T leak) { return v > T(0) ? v : v * leak; }

// The keep flags (1 = kept) of one hidden position's tied-dropout mask, (rows, cols) bytes. Drawn once
// per direction and shared by the two channels, whose masks are identical by construction; a
// transient of the op, never kept between forward and backward. Undefined when nothing is dropped.
inline at::Tensor keep_flags(const DropoutMask& mask, int64_t rows, int64_t cols, const at::Device& device) {
  if (!mask.active) return at::Tensor();
  auto flags = at::empty({rows, cols}, at::TensorOptions().dtype(at::kByte).device(device));
  uint8_t* out = flags.data_ptr<uint8_t>();
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    bool keep[4];
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* row = out + r * cols;
      for (int64_t c = 0; c < cols; c += 4) {
        mask.four(r, c >> 2, keep);
        const int64_t n = std::min<int64_t>(4, cols - c);
        for (int64_t j = 0; j < n; ++j) row[c + j] = keep[j];
      }
    }
  });
  return flags;
}

// One hidden block's parameters and mask, as raw pointers for the passes below.
template <typename T>
struct BlockArgs {
  const T* gamma;
  const T* beta;
  const uint8_t* keep;  // nullptr: no dropout
  T scale;              // multiplier of kept elements
  T leak;
  bool act_first;       // LeakyReLU -> BN (else BN -> LeakyReLU)
};

// z: contiguous (rows, cols) GEMM output. Writes out (after dropout), pre (before it; may be nullptr)
// and the batch mean and std = sqrt(var_biased + eps) of the BN input.
template <typename T>
void block_forward(const T* z, int64_t rows, int64_t cols, const BlockArgs<T>& b, double eps, T* out, T* pre,
                   T* mean_out, T* std_out) {
  const int64_t chunks = (cols + kBlockChunk - 1) / kBlockChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * kBlockChunk, w = std::min(cols, c0 + kBlockChunk) - c0;
      auto u = [&](int64_t r, int64_t j) {
        const T v = z[r * cols + c0 + j];
        return b.act_first ? leaky_relu(v, b.leak) : v;
      };
      std::array<double, kBlockChunk> acc{};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < w; ++j) acc[j] += u(r, j);
      std::array<T, kBlockChunk> mean, scale, shift;
      for (int64_t j = 0; j < w; ++j) mean[j] = static_cast<T>(acc[j] / rows), acc[j] = 0.0;
      // Squared deviations from the mean (not E[u^2] - m^2): exact even when the mean dwarfs the spread.
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < w; ++j) {
          const double d = u(r, j) - mean[j];
          acc[j] += d * d;
        }
      for (int64_t j = 0; j < w; ++j) {
        const double s = std::sqrt(acc[j] / rows + eps);
        mean_out[c0 + j] = mean[j];
        std_out[c0 + j] = static_cast<T>(s);
        scale[j] = static_cast<T>(b.gamma[c0 + j] / s);
        shift[j] = b.beta[c0 + j];
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * cols + c0;
        for (int64_t j = 0; j < w; ++j) {
          T v = (u(r, j) - mean[j]) * scale[j] + shift[j];
          if (!b.act_first) v = leaky_relu(v, b.leak);
          if (pre) pre[o + j] = v;
          out[o + j] = b.keep ? (b.keep[o + j] ? v * b.scale : T(0)) : v;
        }
      }
    }
  });
}

// Gradients that reach one hidden block: g_out at its output (after dropout), g_extra also after
// dropout and g_pre before it (both may be nullptr; they carry the loss's direct terms at the
// representation position).
template <typename T>
struct BlockGrads {
  const T* g_out;
  const T* g_extra;
  const T* g_pre;
};

// Backward of block_forward on the same z, mean and std. Writes grad_z (contiguous (rows, cols)),
// the block's output rebuilt into a_out (for the weight gradient), dgamma, dbeta and, when not
// nullptr, dbias = the column sums of grad_z (the bias added before z).
template <typename T>
void block_backward(const BlockGrads<T>& g, const T* z, int64_t rows, int64_t cols, const BlockArgs<T>& b,
                    const T* mean, const T* std, T* grad_z, T* a_out, T* dgamma, T* dbeta, T* dbias) {
  const int64_t chunks = (cols + kBlockChunk - 1) / kBlockChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * kBlockChunk, w = std::min(cols, c0 + kBlockChunk) - c0;
      std::array<T, kBlockChunk> rstd;
      for (int64_t j = 0; j < w; ++j) rstd[j] = T(1) / std[c0 + j];
      auto xhat = [&](int64_t o, int64_t j) {
        const T v = z[o + j];
        return ((b.act_first ? leaky_relu(v, b.leak) : v) - mean[c0 + j]) * rstd[j];
      };
      // Pass 1: the gradient at the BN output (kept in grad_z), its column sums, the rebuilt output.
      std::array<double, kBlockChunk> sum_g{}, sum_gx{};
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * cols + c0;
        for (int64_t j = 0; j < w; ++j) {
          const T xh = xhat(o, j);
          const T y = b.gamma[c0 + j] * xh + b.beta[c0 + j];
          const T m = b.keep ? (b.keep[o + j] ? b.scale : T(0)) : T(1);
          T go = g.g_out ? g.g_out[o + j] : T(0);
          if (g.g_extra) go += g.g_extra[o + j];
          T gy = go * m;
          if (g.g_pre) gy += g.g_pre[o + j];
          if (!b.act_first && y <= T(0)) gy *= b.leak;
          a_out[o + j] = (b.act_first ? y : leaky_relu(y, b.leak)) * m;
          grad_z[o + j] = gy;
          sum_g[j] += gy;
          sum_gx[j] += static_cast<double>(gy) * xh;
        }
      }
      std::array<T, kBlockChunk> k0, k1, k2;  // grad_z = k0 * gy - k1 - k2 * xhat
      for (int64_t j = 0; j < w; ++j) {
        dbeta[c0 + j] = static_cast<T>(sum_g[j]);
        dgamma[c0 + j] = static_cast<T>(sum_gx[j]);
        k0[j] = b.gamma[c0 + j] * rstd[j];
        k1[j] = static_cast<T>(k0[j] * sum_g[j] / rows);
        k2[j] = static_cast<T>(k0[j] * sum_gx[j] / rows);
      }
      // Pass 2: through the normalisation (and the LeakyReLU before it).
      std::array<double, kBlockChunk> sum_gz{};
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * cols + c0;
        for (int64_t j = 0; j < w; ++j) {
          T gz = k0[j] * grad_z[o + j] - k1[j] - k2[j] * xhat(o, j);
          if (b.act_first && z[o + j] <= T(0)) gz *= b.leak;
          grad_z[o + j] = gz;
          sum_gz[j] += gz;
        }
      }
      if (dbias)
        for (int64_t j = 0; j < w; ++j) dbias[c0 + j] = static_cast<T>(sum_gz[j]);
    }
  });
}

}  // namespace twoway_fast
