// The per-layer passes of the fused network op (csrc/cpu/tied_network.cpp): one forward pass that
// finishes the batch statistics of a GEMM output and applies BN, gamma/beta, LeakyReLU and the tied
// dropout; one backward pass (a column reduction, then the input gradient) that also rebuilds the
// layer's output for the weight-gradient GEMM, so forward never keeps activations for backward.
// Work is split into column chunks (statistics are per column); inside a chunk rows run outermost and
// the chunk's contiguous columns innermost, so the loops vectorise. Column sums accumulate in double.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "philox.h"

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
  int64_t tasks = (cols + kBlockChunk - 1) / kBlockChunk;
  if (rows * cols >= kParallelMinElements && !at::in_parallel_region()) {
    const int64_t threads = at::get_num_threads();
    tasks = (tasks + threads - 1) / threads * threads;
  }
  return std::min(kBlockChunk, ((cols + tasks - 1) / tasks + 15) / 16 * 16);
}

// The passes' loops are compiled twice: for the build's baseline (x86-64-v2: SSE4.2, 4 floats a vector)
// and for AVX-512 (16), the latter run when the CPU has it. run_fastest(f) calls f compiled for the
// best of the two: run_avx512 carries the target and, being flatten, inlines f's loops into itself.
// Both builds give the same bits: no loop reduces across its vector lanes, and setup.py turns off FMA
// contraction (-ffp-contract=off), which only the AVX-512 build could use.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TWOWAY_AVX512_CLONES 1
template <typename F>
__attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512"), flatten))
void run_avx512(const F& f) {
  f();
}

// TWOWAY_FAST_BASELINE_ONLY=1 keeps to the baseline build (tests/test_cpu_builds.py compares the two).
inline bool cpu_has_avx512() {
  static const bool has = std::getenv("TWOWAY_FAST_BASELINE_ONLY") == nullptr &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
}
#endif

template <typename F>
inline void run_fastest(const F& f) {
#ifdef TWOWAY_AVX512_CLONES
  if (cpu_has_avx512()) return run_avx512(f);
#endif
  f();
}

// Calls f(std::integral_constant<bool, a>, std::integral_constant<bool, b>, std::integral_constant<bool, c>):
// the passes below are compiled per combination of their flags, so their inner loops have no branches
// and vectorise.
template <typename F>
inline void with_flags(bool a, bool b, bool c, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (a) {
    if (b) c ? f(Y{}, Y{}, Y{}) : f(Y{}, Y{}, N{});
    else c ? f(Y{}, N{}, Y{}) : f(Y{}, N{}, N{});
  } else {
    if (b) c ? f(N{}, Y{}, Y{}) : f(N{}, Y{}, N{});
    else c ? f(N{}, N{}, Y{}) : f(N{}, N{}, N{});
  }
}

// The multipliers of one hidden position's tied-dropout mask, (rows, cols) in the activations'
// dtype: 1 / sqrt(q) where kept, 0 where dropped. The DropoutMask of philox.h (the same
// Philox4x32-10 rounds), evaluated for 16 counters at a time so the rounds vectorise. Drawn once per
// direction and shared by the two channels, whose masks are identical by construction; a transient
// of the op, never kept between forward and backward. In the passes' dtype rather than bytes: a byte
// in a loop of floats makes GCC vectorise it 64 columns at a time (row tails up to 63 then run
// scalar) or, held to 16, on 128-bit registers. Undefined when nothing is dropped.
template <typename T>
void fill_keep_multipliers(const DropoutMask& mask, int64_t rows, int64_t cols, T* out) {
  constexpr int kLanes = 16;
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  // Copies, not captures by reference: the stores below may alias anything, so the compiler would
  // reload every captured value after each of them.
  const DropoutMask m = mask;
  const uint32_t threshold = static_cast<uint32_t>(m.threshold);  // < 2^32 when active
  const T scale = static_cast<T>(m.scale);
  at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) { run_fastest([=] {
    alignas(64) uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    alignas(64) uint8_t flags[4 * kLanes];
    alignas(64) T keep[4 * kLanes];
    for (int64_t r = r0; r < r1; ++r) {
      T* row = out + r * cols;
      const uint32_t row_counter = static_cast<uint32_t>(m.first_row + r);
      for (int64_t col = 0; col < cols; col += 4 * kLanes) {
#pragma omp simd  // vector stores: the rounds' vector loads would stall on scalar ones
        for (int l = 0; l < kLanes; ++l) {
          c0[l] = static_cast<uint32_t>(col / 4 + l), c1[l] = row_counter, c2[l] = m.off_lo, c3[l] = m.off_hi;
        }
        uint32_t k0 = m.k0, k1 = m.k1;
        for (int round = 0; round < 10; ++round) {
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) {
            const uint64_t p0 = static_cast<uint64_t>(M0) * c0[l], p1 = static_cast<uint64_t>(M1) * c2[l];
            const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
            const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = static_cast<uint32_t>(p1), c3[l] = static_cast<uint32_t>(p0), c0[l] = n0, c2[l] = n2;
          }
          k0 += W0, k1 += W1;
        }
#pragma omp simd  // flags as bytes first: a select storing T at stride 4 does not vectorise
        for (int l = 0; l < kLanes; ++l) {
          flags[4 * l] = c0[l] < threshold, flags[4 * l + 1] = c1[l] < threshold;
          flags[4 * l + 2] = c2[l] < threshold, flags[4 * l + 3] = c3[l] < threshold;
        }
#pragma omp simd
        for (int e = 0; e < 4 * kLanes; ++e) keep[e] = static_cast<T>(flags[e]) * scale;
        std::memcpy(row + col, keep, std::min<int64_t>(4 * kLanes, cols - col) * sizeof(T));
      }
    }
  }); });
}

inline at::Tensor keep_multipliers(const DropoutMask& mask, int64_t rows, int64_t cols,
                                   const at::TensorOptions& options) {
  if (!mask.active) return at::Tensor();
  auto multipliers = at::empty({rows, cols}, options);
  AT_DISPATCH_FLOATING_TYPES(multipliers.scalar_type(), "keep_multipliers", [&] {
    fill_keep_multipliers(mask, rows, cols, multipliers.data_ptr<scalar_t>());
  });
  return multipliers;
}

// One hidden block's parameters and mask, as raw pointers for the passes below.
template <typename T>
struct BlockArgs {
  const T* gamma;
  const T* beta;
  const T* keep;  // the mask's multipliers (keep_multipliers); nullptr: no dropout
  T leak;
  bool act_first;  // LeakyReLU -> BN (else BN -> LeakyReLU)
};

// A block's BlockArgs from its tensors (keep: keep_multipliers' tensor, undefined without dropout).
template <typename T>
BlockArgs<T> block_args(const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& keep, double leak,
                        bool act_first) {
  return {gamma.data_ptr<T>(), beta.data_ptr<T>(), keep.defined() ? keep.data_ptr<T>() : nullptr,
          static_cast<T>(leak), act_first};
}

// LeakyReLU when `on` (a compile-time constant at every use), as a multiply by a selected factor:
// a branch around the multiply would keep the loops from vectorising.
template <typename T>
inline T leaky_slope(T v, T leak) { return v > T(0) ? T(1) : leak; }

template <typename T>
inline T leaky_if(bool on, T v, T leak) { return on ? v * leaky_slope(v, leak) : v; }

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

// Gradients that reach one hidden block: g_out at its output (after dropout); at the representation
// position also g_extra (after dropout) and g_pre (before it), the loss's direct terms; both nullptr
// elsewhere, both set there.
template <typename T>
struct BlockGrads {
  const T* g_out;
  const T* g_extra;
  const T* g_pre;
};

// Backward of block_forward on the same z, mean and std. Writes grad_z (contiguous (rows, cols)),
// the block's output rebuilt into a_out (for the weight gradient), dgamma, dbeta and, in act_first
// order (where the bias before z matters), dbias = the column sums of grad_z. Given dmean and dstd,
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
        if (kActFirst)
          for (int64_t j = 0; j < w; ++j) dbias[c0 + j] = static_cast<T>(sum_gz[j]);
      }
    }); });
  });
}

}  // namespace twoway_fast
