// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
// counter-based generator behind the tied-dropout masks. A mask element is a pure function of
// (seed, offset, row, col), so backward regenerates it, both channels see the same one and the
// plain-PyTorch reference (twoway_fast/reference.py: philox4x32) rebuilds it bit for bit.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TWOWAY_HD __host__ __device__ __forceinline__
#else
#define TWOWAY_HD inline
#endif

namespace twoway_fast {

struct Philox4 {
  uint32_t v[4];
};

TWOWAY_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(M1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return {{c0, c1, c2, c3}};
}

// The tied-dropout mask of one hidden position. rng_state = (seed, offset, first_row), int64.
// Element (row, col) is kept iff word (col % 4) of
//   philox4x32_10(counter = (col / 4, first_row + row, offset_lo, offset_hi), key = (seed_lo, seed_hi))
// is below floor(keep_prob * 2^32); kept elements are scaled by 1 / sqrt(keep_prob) (docs/method.md#the-network),
// that factor rounded to the activations' dtype.
struct DropoutMask {
  uint32_t k0, k1, off_lo, off_hi;
  int64_t first_row;
  uint64_t threshold;  // 2^32 when nothing is dropped
  double scale;
  bool active;

  TWOWAY_HD static DropoutMask make(int64_t seed, int64_t offset, int64_t first_row, double p) {
    const double keep = 1.0 - p;
    DropoutMask m;
    m.k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
    m.k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
    m.off_lo = static_cast<uint32_t>(static_cast<uint64_t>(offset));
    m.off_hi = static_cast<uint32_t>(static_cast<uint64_t>(offset) >> 32);
    m.first_row = first_row;
    m.threshold = static_cast<uint64_t>(floor(keep * 4294967296.0));
    m.scale = 1.0 / sqrt(keep);
    m.active = p > 0.0;
    return m;
  }

  // Keep flags for columns 4*col4 .. 4*col4+3 of a row.
  TWOWAY_HD void four(int64_t row, int64_t col4, bool keep[4]) const {
    if (!active) {
      keep[0] = keep[1] = keep[2] = keep[3] = true;
      return;
    }
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(col4), static_cast<uint32_t>(first_row + row),
                                    off_lo, off_hi, k0, k1);
    for (int j = 0; j < 4; ++j) keep[j] = static_cast<uint64_t>(r.v[j]) < threshold;
  }
};

}  // namespace twoway_fast
