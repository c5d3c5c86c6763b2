// The backward pass of one hidden block (of block_forward.h): a column reduction, then the input
// gradient; it also rebuilds the layer's output for the weight-gradient GEMM, so forward never keeps
// activations for backward. Chunks and loop order as in block_forward.h.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/block_args.h"
#include "cpu/cpu_builds.h"
#include "cpu/parallel_chunks.h"

namespace twoway_fast {

// Backward of block_forward on the same z, mean and std. Writes grad_z (contiguous (rows, cols)),
// the block's output rebuilt into a_out (for the weight gradient), dgamma, dbeta and, in act_first
// order (where the bias before z matters) where dbias is given, dbias = the column sums of grad_z. Given
// dmean and dstd,
// mean and std are treated as inputs (block_forward's stats_given): grad_z holds only the direct
// path through the normalisation, and the statistics' gradients go to dmean and dstd.
template <typename T>
void block_backward(const BlockGrads<T>& g, const T* z, int64_t rows, int64_t cols, const BlockArgs<T>& b,
                    const T* mean_in, const T* std_in, T* grad_z, T* a_out, T* dgamma, T* dbeta, T* dbias,
                    T* dmean = nullptr, T* dstd = nullptr) {
  const int64_t width = chunk_width(rows, cols), chunks = (cols + width - 1) / width;
  with_flags(b.act_first, b.keep != nullptr, g.g_extra != nullptr, [&](auto act_first_c, auto has_keep_c,
                                                                        auto has_extra_c) {
    constexpr bool kActFirst = decltype(act_first_c)::value, kKeep = decltype(has_keep_c)::value,
                   kExtra = decltype(has_extra_c)::value;
    at::parallel_for(0, chunks, grain_for(width * rows), [&](int64_t t0, int64_t t1) { run_fastest([&] {
      const T leak = b.leak;  // a local, as in block_forward
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * width, w = std::min(cols, c0 + width) - c0;
        alignas(64) T mean[kBlockChunk], rstd[kBlockChunk], gamma[kBlockChunk], beta[kBlockChunk];
        for (int64_t j = 0; j < w; ++j) {
          mean[j] = mean_in[c0 + j], rstd[j] = T(1) / std_in[c0 + j];
          gamma[j] = b.gamma[c0 + j], beta[j] = b.beta[c0 + j];
        }
        // Pass 1: the gradient at the BN output (kept in grad_z), its column sums, the rebuilt output.
        alignas(64) double sum_g[kBlockChunk] = {}, sum_gx[kBlockChunk] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t o = r * cols + c0;
          const T* __restrict zr = z + o;
          const T* __restrict gr = g.g_out + o;
          const T* __restrict er = kExtra ? g.g_extra + o : nullptr;
          const T* __restrict pr = kExtra ? g.g_pre + o : nullptr;
          const T* __restrict kr = kKeep ? b.keep + o : nullptr;
          T* __restrict ar = a_out + o;
          T* __restrict gzr = grad_z + o;
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) {
            const T xh = (leaky_if(kActFirst, zr[j], leak) - mean[j]) * rstd[j];
            const T y = gamma[j] * xh + beta[j];
            const T m = kKeep ? kr[j] : T(1);
            T gy = (kExtra ? gr[j] + er[j] : gr[j]) * m;
            if (kExtra) gy += pr[j];
            if (!kActFirst) gy *= leaky_slope(y, leak);
            ar[j] = leaky_if(!kActFirst, y, leak) * m;
            gzr[j] = gy;
            sum_g[j] += gy;
            sum_gx[j] += static_cast<double>(gy) * xh;
          }
        }
        alignas(64) T k0[kBlockChunk], k1[kBlockChunk], k2[kBlockChunk];  // grad_z = k0 gy - k1 - k2 xhat
        for (int64_t j = 0; j < w; ++j) {
          dbeta[c0 + j] = static_cast<T>(sum_g[j]);
          dgamma[c0 + j] = static_cast<T>(sum_gx[j]);
          k0[j] = gamma[j] * rstd[j];
          if (dmean != nullptr) {  // d out / d mean = -k0, d out / d std = -k0 xhat
            dmean[c0 + j] = static_cast<T>(-k0[j] * sum_g[j]);
            dstd[c0 + j] = static_cast<T>(-k0[j] * sum_gx[j]);
            k1[j] = k2[j] = T(0);
          } else {
            k1[j] = static_cast<T>(k0[j] * sum_g[j] / rows);
            k2[j] = static_cast<T>(k0[j] * sum_gx[j] / rows);
          }
        }
        // Pass 2: through the normalisation (and the LeakyReLU before it).
        alignas(64) double sum_gz[kBlockChunk] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t o = r * cols + c0;
          const T* __restrict zr = z + o;
          T* __restrict gzr = grad_z + o;
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) {
            const T zv = zr[j];
            const T xh = (leaky_if(kActFirst, zv, leak) - mean[j]) * rstd[j];
            T gz = k0[j] * gzr[j] - k1[j] - k2[j] * xh;
            if (kActFirst) gz *= leaky_slope(zv, leak);
            gzr[j] = gz;
            if (kActFirst) sum_gz[j] += gz;
          }
        }
        if (kActFirst && dbias != nullptr)
          for (int64_t j = 0; j < w; ++j) dbias[c0 + j] = static_cast<T>(sum_gz[j]);
      }
    }); });
  });
}

}  // namespace twoway_fast
