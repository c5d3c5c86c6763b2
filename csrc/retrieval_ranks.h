// The device-independent half of retrieval_ranks: input checks, the per-row thresholds and the tile
// loop. The CPU and CUDA kernels supply the float64 reference dot product and the counting pass.
//
// Rule: rank = 1 + #non-matching candidates c with !(s_c < best), best = the highest score among the
// query's matching candidates: ties count against the query, and so does a NaN score.
//
// Which scores? One GEMM does not round identical columns identically (MKL's sgemm differs in the last
// bit between positions, measured), so "the block's score" would make a copy of the true candidate
// sometimes tie and sometimes not. The scores that count are instead s = dot64(query, candidate): a
// float64 dot product in one fixed order, a pure function of the two rows, so identical rows always
// tie. The GEMM block only sorts candidates out: a rigorous bound e on |GEMM score - dot64| (both
// within gamma_d * |q| |c| of the exact value) decides every candidate whose block score is farther
// than e from best; only those within e (near-ties: rare on real data, exact ties among them) are
// recomputed with dot64, one d-length dot product each.
//
// One GEMM of image rows against all captions serves both directions: rows count image -> caption
// ranks, columns accumulate caption -> image counts across tiles. Memory: one tile_rows x m block.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "op_results.h"

namespace twoway_fast {

// Everything the counting pass needs besides the block.
struct Prepared {
  at::Tensor a, b, group;  // (n, d), (m, d) contiguous, float or double; (m,) int64
  at::Tensor best_a;       // (n,) double: dot64 of each a row with its best matching b row
  at::Tensor true_b;       // (m,) double: dot64 of each b row with its a row
  at::Tensor per_a;        // (n,) int64: matching b rows per a row
  at::Tensor hi_a, lo_a;   // (n,) GEMM dtype: best_a + and - the bound, rounded outwards
  at::Tensor hi_b, lo_b;   // (m,) GEMM dtype: true_b + and - the bound, rounded outwards
};

inline void check_retrieval_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group,
                                   int64_t tile_rows) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
              "retrieval_ranks: a and b must be (n, d) and (m, d) with one d, got shapes ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.size(0) > 0 && b.size(0) > 0, "retrieval_ranks: a and b need at least one row each, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(1) > 0, "retrieval_ranks: a and b need at least one column, got shapes ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.is_floating_point() && a.scalar_type() == b.scalar_type(),
              "retrieval_ranks: a and b must be floating point of one dtype, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(group.scalar_type() == at::kLong && group.dim() == 1 && group.size(0) == b.size(0),
              "retrieval_ranks: group must be int64 of shape (", b.size(0), "), got ", group.scalar_type(),
              " of shape ", group.sizes());
  TORCH_CHECK(a.device() == b.device() && group.device() == a.device(),
              "retrieval_ranks: a, b and group must be on one device, got ", a.device(), ", ", b.device(),
              " and ", group.device());
  TORCH_CHECK(tile_rows > 0, "retrieval_ranks: tile_rows must be positive, got ", tile_rows);
}

// Validates group (host synchronisations: fine for evaluation, never inside a training step) and
// returns how many b rows each a row has.
inline at::Tensor matches_per_a_row(const at::Tensor& group, int64_t n) {
  const int64_t lo = group.min().item<int64_t>(), hi = group.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < n, "retrieval_ranks: group values must index rows of a (0..", n - 1, "), got ",
              lo, "..", hi);
  auto counts = at::bincount(group, {}, n);
  const int64_t without = (counts == 0).sum().item<int64_t>();
  TORCH_CHECK(without == 0, "retrieval_ranks: every row of a needs at least one row of b in group; ", without,
              " rows have none");
  return counts;
}

// c such that |GEMM(q . x) - dot64(q . x)| <= c |q| |x| (plus an absolute term for underflow): each is
// within gamma_d = d u / (1 - d u) of the exact value (Higham, any summation order, FMA or not). When
// float32 matmuls may run in TF32 or bfloat16, the inputs' rounding (<= 2^-8 each) is added.
inline double gemm_error_coefficient(int64_t d, at::ScalarType dtype, bool reduced_fp32) {
  auto gamma = [d](double u) {
    const double du = static_cast<double>(d) * u;
    return du < 0.5 ? du / (1.0 - du) : std::numeric_limits<double>::infinity();
  };
  const double u_gemm = dtype == at::kDouble ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  double c = gamma(u_gemm) + gamma(std::ldexp(1.0, -53));
  if (dtype == at::kFloat && reduced_fp32) c += 2 * std::ldexp(1.0, -8) + std::ldexp(1.0, -16);
  return c * 1.01;  // headroom for the rounding of the norms and of this bound itself
}

// Whether float32 matmuls may run in TF32/bfloat16. The legacy getter exists in every torch this
// builds against (the enum API is newer); it throws once the new per-backend API has been used, and
// then we assume reduced precision: a wider band, more near-ties recomputed, the same ranks.
inline bool reduced_fp32_matmul() {
  try {
    return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
  } catch (const c10::Error&) {
    return true;
  }
}

// [centre - slack, centre + slack] in the GEMM dtype, rounded outwards so it still contains the
// double-precision interval.
inline std::tuple<at::Tensor, at::Tensor> band(const at::Tensor& centre, const at::Tensor& slack,
                                               at::ScalarType dtype) {
  const auto inf = at::full({}, std::numeric_limits<double>::infinity(), centre.options()).to(dtype);
  const auto hi = (centre + slack).to(dtype), lo = (centre - slack).to(dtype);
  return {at::nextafter(hi, inf), at::nextafter(lo, -inf)};
}

// true_scores(a, b, group) -> (m,) double: dot64(a[group[j]], b[j]). count(block, row0, prep,
// ranks_a rows of the tile, counts_b): see the kernels.
template <typename TrueScores, typename Count>
RanksResult retrieval_ranks_tiled(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& group_in,
                                  int64_t tile_rows, TrueScores&& true_scores, Count&& count) {
  check_retrieval_inputs(a_in, b_in, group_in, tile_rows);
  const bool reduced = a_in.scalar_type() == at::kHalf || a_in.scalar_type() == at::kBFloat16;
  Prepared p;
  p.a = reduced ? a_in.to(at::kFloat).contiguous() : a_in.contiguous();  // half/bf16: scored in float32
  p.b = reduced ? b_in.to(at::kFloat).contiguous() : b_in.contiguous();
  p.group = group_in.contiguous();
  const int64_t n = p.a.size(0), m = p.b.size(0), d = p.a.size(1);
  const auto dtype = p.a.scalar_type();
  p.per_a = matches_per_a_row(p.group, n);

  p.true_b = true_scores(p.a, p.b, p.group);
  const auto f64 = p.true_b.options();
  const auto nan_matches = at::zeros({n}, f64).index_add_(0, p.group, p.true_b.isnan().to(at::kDouble));
  p.best_a = at::full({n}, -std::numeric_limits<double>::infinity(), f64)
                 .scatter_reduce_(0, p.group, p.true_b, "amax")
                 .masked_fill_(nan_matches > 0, std::numeric_limits<double>::quiet_NaN());

  const double c = gemm_error_coefficient(d, dtype, reduced_fp32_matmul());
  const double tiny = static_cast<double>(d) * 4 *
                      (dtype == at::kDouble ? std::numeric_limits<double>::min() : std::numeric_limits<float>::min());
  // Norms in the inputs' dtype (no float64 copy of the inputs), widened by their own rounding bound.
  // A NaN row leaves only its own scores undecided (all recomputed, and all NaN), not everyone's.
  const double inf = std::numeric_limits<double>::infinity();
  const double widen = 1.0 + 2 * gemm_error_coefficient(d, dtype, false);
  // A finite row whose norm overflows the inputs' dtype (float32 past ~1.8e19) has it recomputed in
  // float64 (rare: only those rows are copied); a row holding Inf stays Inf there too.
  auto norms = [&](const at::Tensor& x) {
    auto norm = at::linalg_vector_norm(x, 2, {1}).to(at::kDouble);
    const auto over = norm.isinf();
    if (over.any().item<bool>())
      norm.index_put_({over}, at::linalg_vector_norm(x.index({over}).to(at::kDouble), 2, {1}));
    return (norm * widen).nan_to_num(0.0, inf);
  };
  const auto norm_a = norms(p.a), norm_b = norms(p.b);
  std::tie(p.hi_a, p.lo_a) = band(p.best_a, norm_a * (c * norm_b.max()) + tiny, dtype);
  std::tie(p.hi_b, p.lo_b) = band(p.true_b, norm_b * (c * norm_a.max()) + tiny, dtype);

  auto ranks_a = at::empty({n}, p.group.options());
  auto counts_b = at::zeros({m}, p.group.options());
  const auto b_t = p.b.t();
  for (int64_t row0 = 0; row0 < n; row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row0);
    const auto block = at::mm(p.a.narrow(0, row0, rows), b_t).contiguous();  // (rows, m)
    count(block, row0, p, ranks_a.narrow(0, row0, rows), counts_b);
  }
  // A NaN true score makes every other a row count: the worst rank.
  auto ranks_b = at::where(p.true_b.isnan(), at::full({}, n, counts_b.options()), counts_b + 1);
  return {ranks_a, ranks_b};
}

}  // namespace twoway_fast
