// The 2-Way loss's terms (docs/method.md#the-loss), their coefficients, variants and the sums they are
// computed from: the one description the CPU and CUDA kernels share, host and device. A term's value
// from its sums and the weighted total are here; each device sums (csrc/cpu/twoway_loss.cpp,
// csrc/cuda/twoway_loss_terms.cuh) and differentiates them. Python's copy: twoway_fast/loss_terms.py
// (tests/test_loss_terms.py reads this header against it).
#pragma once
#include <math.h>  // ::sqrt, ::log: the same functions on the host and (under nvcc) on the device

#include <cstdint>

#if defined(__CUDACC__)
#define TWOWAY_HOST_DEVICE __host__ __device__
#else
#define TWOWAY_HOST_DEVICE
#endif

namespace twoway_fast {

// terms = (total, then each term unweighted), as the loss and step ops return them.
namespace term {
enum : int {
  kTotal, kReconX, kReconY, kMidway, kDecorrX, kDecorrY, kWeightDecay, kGammaPenalty, kDecorrXy, kUniformX,
  kUniformY, kCount
};
}
constexpr int kTerms = term::kCount;

// coefficients = (lx, ly, lh, lc, wd, lg, lxy, lu), as the ops take them.
namespace coefficient {
enum : int { kLx, kLy, kLh, kLc, kWd, kLg, kLxy, kLu, kCount };
}
constexpr int kCoefficients = coefficient::kCount;

// The coefficient term t (t >= 1) enters the total with.
TWOWAY_HOST_DEVICE constexpr int coefficient_of(int t) {
  switch (t) {
    case term::kReconX: return coefficient::kLx;
    case term::kReconY: return coefficient::kLy;
    case term::kMidway: return coefficient::kLh;
    case term::kDecorrX:
    case term::kDecorrY: return coefficient::kLc;
    case term::kWeightDecay: return coefficient::kWd;
    case term::kDecorrXy: return coefficient::kLxy;
    case term::kUniformX:
    case term::kUniformY: return coefficient::kLu;
    default: return coefficient::kLg;
  }
}

// The variants (docs/method.md#loss-variants) as the bits of the ops' loss_options.
namespace option {
enum : int64_t {
  kMidwayLog = 1,      // the mid-way term's log form, sum_i log(d_i + kMidwayLogEps)
  kCorrelation = 2,    // the decorrelation of the batch correlation matrix, not the second moment
  kBeforeDropout = 4,  // the decorrelation of hx_pre/hy_pre (the step ops; the loss op takes hx_dec/hy_dec)
  kAll = 7,
};
}
TWOWAY_HOST_DEVICE constexpr bool has(int64_t options, int64_t bit) { return (options & bit) != 0; }

// The log mid-way term's eps: it bounds the gradient 1 / (d_i + eps) of a dimension whose two
// representations match exactly (d_i = 0).
constexpr double kMidwayLogEps = 1e-3;

// The uniformity term's temperature t in exp(-t ||u_i - u_j||^2) (Wang and Isola's t = 2), and the
// smallest norm a centred code row is divided by (a constant row's u is 0, not NaN).
constexpr double kUniformityTemperature = 2.0;
constexpr double kUniformityEps = 1e-12;

// The sums the terms are computed from, in double, whichever device adds them up.
namespace sum {
enum : int {
  kReconX, kReconY, kMidway, kFroX, kDiagX, kFroY, kDiagY, kWeightDecay, kGammaPenalty, kFroXy, kDiagXy,
  kGapsX, kGapsDiagX, kGapsY, kGapsDiagY, kCount
};
}
constexpr int kSums = sum::kCount;
// What each sum adds up (a and b the op's tensors, C the decorrelation matrices):
//   kReconX/kReconY: (x_hat - x)^2, (y_hat - y)^2 over every element;  kMidway: (hx - hy)^2 (the sum form)
//   kFroX/kFroY/kFroXy: C^2 over every element;  kDiagX/kDiagY/kDiagXy: C^2 over the diagonal (Cxy the
//   cross-view matrix Hx^T Hy / B)
//   kWeightDecay: every weight and gamma squared;  kGammaPenalty: every gamma's 1 / gamma^2
//   kGapsX/kGapsY: exp(2 t (G_ij - 1)) = exp(-t ||u_i - u_j||^2) over every element of G = U U^T (U the
//   decorrelation input's rows, each centred and scaled to unit norm: the uniformity term's points);
//   kGapsDiagX/kGapsDiagY: the same over the diagonal (i = j, no pair)

// The uniformity term, log mean_{i != j} exp(-t ||u_i - u_j||^2), from the sums over every element of G and
// over its diagonal; 0 for fewer than two rows (no pair).
TWOWAY_HOST_DEVICE inline double uniformity(double gaps, double diag, double rows) {
  return rows < 2 ? 0.0 : ::log((gaps - diag) / (rows * (rows - 1)));
}

// terms from the sums over `rows` rows; the log mid-way term comes summed already (log_midway, from
// per-column sums each device adds in its own order). The total last, each term times its coefficient
// in term order.
TWOWAY_HOST_DEVICE inline void terms_from_sums(const double* s, double rows, int64_t options, double log_midway,
                                               const double* coefficients, double* t) {
  t[term::kReconX] = s[sum::kReconX] / rows;
  t[term::kReconY] = s[sum::kReconY] / rows;
  t[term::kMidway] = has(options, option::kMidwayLog) ? log_midway : s[sum::kMidway] / rows;
  t[term::kDecorrX] = ::sqrt(s[sum::kFroX]) - ::sqrt(s[sum::kDiagX]);
  t[term::kDecorrY] = ::sqrt(s[sum::kFroY]) - ::sqrt(s[sum::kDiagY]);
  t[term::kWeightDecay] = s[sum::kWeightDecay];
  t[term::kGammaPenalty] = s[sum::kGammaPenalty];
  t[term::kDecorrXy] = ::sqrt(s[sum::kFroXy]) - ::sqrt(s[sum::kDiagXy]);
  t[term::kUniformX] = uniformity(s[sum::kGapsX], s[sum::kGapsDiagX], rows);
  t[term::kUniformY] = uniformity(s[sum::kGapsY], s[sum::kGapsDiagY], rows);
  t[term::kTotal] = 0;
  for (int i = 1; i < kTerms; ++i) t[term::kTotal] += coefficients[coefficient_of(i)] * t[i];
}

// Term i's weight in the gradient of sum_j grad_terms[j] * terms[j]: through the total and directly.
// T: double, or a 0-dim device tensor (no host read).
template <typename T>
T term_weight(const T& grad_total, const T& grad_term, const double* coefficients, int i) {
  return grad_total * coefficients[coefficient_of(i)] + grad_term;
}

}  // namespace twoway_fast
