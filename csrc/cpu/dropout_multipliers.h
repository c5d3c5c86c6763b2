// The tied dropout on the CPU: a hidden position's mask (philox.h) as the multipliers the passes apply.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "cpu/cpu_builds.h"
#include "cpu/parallel_chunks.h"
#include "philox.h"

namespace twoway_fast {

// The DropoutMask of one hidden position from its rng_state = int64 (seed, offset, first_row).
inline DropoutMask mask_from(const at::Tensor& rng_state, double p) {
  const auto s = rng_state.contiguous();
  const int64_t* v = s.data_ptr<int64_t>();
  return DropoutMask::make(v[0], v[1], v[2], p);
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

}  // namespace twoway_fast
