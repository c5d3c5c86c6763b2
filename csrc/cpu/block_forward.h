// The forward pass of one hidden block, as the fused ops run it (the network op, csrc/cpu/twoway_net.cpp,
// and the standalone hidden-block ops): it finishes the batch statistics of a GEMM output and applies
// BN, gamma/beta, LeakyReLU and the tied dropout. Work is split into column chunks (statistics are per
// column); inside a chunk rows run outermost and the chunk's contiguous columns innermost, so the loops
// vectorise. Column sums accumulate in double. Its backward: block_backward.h.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cpu/block_args.h"
#include "cpu/cpu_builds.h"
#include "cpu/parallel_chunks.h"

namespace twoway_fast {

// z: contiguous (rows, cols) GEMM output. In act_first order the layer's bias is added to z in place
// (backward reads z with it); otherwise batch norm comes first and cancels it, and bias is unused.
// Writes out (after dropout), pre (before it; may be nullptr) and the batch mean and
// std = sqrt(var_biased + eps) of the BN input. With stats_given, mean_out and std_out hold statistics
// taken elsewhere (over the rows of several processes): they are read, not written, the moment pass
// is skipped, and z and bias are left alone (eps unused).
template <typename T>
void block_forward(T* z, const T* bias, int64_t rows, int64_t cols, const BlockArgs<T>& b, double eps, T* out,
                   T* pre, T* mean_out, T* std_out, bool stats_given = false) {
  const int64_t width = chunk_width(rows, cols), chunks = (cols + width - 1) / width;
  with_flags(b.act_first, b.keep != nullptr, pre != nullptr, [&](auto act_first_c, auto has_keep_c, auto has_pre_c) {
    constexpr bool kActFirst = decltype(act_first_c)::value, kKeep = decltype(has_keep_c)::value,
                   kPre = decltype(has_pre_c)::value;
    at::parallel_for(0, chunks, grain_for(width * rows), [&](int64_t t0, int64_t t1) { run_fastest([&] {
      const T leak = b.leak;  // a local, not a capture: through a reference it is reloaded after every store
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * width, w = std::min(cols, c0 + width) - c0;
        // One pass of moments in double around the first row's value, which keeps them exact even
        // when the mean dwarfs the spread.
        alignas(64) T mean[kBlockChunk], scale[kBlockChunk], beta[kBlockChunk];
        if (stats_given) {
          for (int64_t j = 0; j < w; ++j) {
            mean[j] = mean_out[c0 + j];
            scale[j] = b.gamma[c0 + j] / std_out[c0 + j];
            beta[j] = b.beta[c0 + j];
          }
        } else {
          alignas(64) T shift[kBlockChunk], add[kBlockChunk];
          alignas(64) double s1[kBlockChunk] = {}, s2[kBlockChunk] = {};
          for (int64_t j = 0; j < w; ++j) add[j] = kActFirst ? bias[c0 + j] : T(0);
          for (int64_t j = 0; j < w; ++j) shift[j] = leaky_if(kActFirst, z[c0 + j] + add[j], leak);
          for (int64_t r = 0; r < rows; ++r) {
            T* __restrict zr = z + r * cols + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) {
              if (kActFirst) zr[j] += add[j];
              const double d = leaky_if(kActFirst, zr[j], leak) - shift[j];
              s1[j] += d;
              s2[j] += d * d;
            }
          }
          for (int64_t j = 0; j < w; ++j) {
            const double m1 = s1[j] / rows, s = std::sqrt(std::max(s2[j] / rows - m1 * m1, 0.0) + eps);
            mean[j] = static_cast<T>(shift[j] + m1);
            mean_out[c0 + j] = mean[j];
            std_out[c0 + j] = static_cast<T>(s);
            scale[j] = static_cast<T>(b.gamma[c0 + j] / s);
            beta[j] = b.beta[c0 + j];
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t o = r * cols + c0;
          const T* __restrict zr = z + o;
          const T* __restrict kr = kKeep ? b.keep + o : nullptr;
          T* __restrict outr = out + o;
          T* __restrict prer = kPre ? pre + o : nullptr;
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) {
            const T v = leaky_if(!kActFirst, (leaky_if(kActFirst, zr[j], leak) - mean[j]) * scale[j] + beta[j], leak);
            if (kPre) prer[j] = v;
            outr[j] = kKeep ? v * kr[j] : v;
          }
        }
      }
    }); });
  });
}

}  // namespace twoway_fast
