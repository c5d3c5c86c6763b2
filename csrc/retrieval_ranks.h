// The device-independent half of retrieval_ranks: input checks, distinct candidates, the match lists
// and the tile loop. The CPU and CUDA kernels supply only the counting pass over one block of scores.
//
// Rule: rank = 1 + #non-matching candidates c with !(s_c < best), best = the highest score among the
// query's matching candidates. So ties count against the query, and a NaN score (a candidate's, or
// the best one's) counts against it too: bad inputs never look like good retrieval.
//
// Coherent ties: `best` is read from the very block the counts compare it with (one GEMM), never
// recomputed apart. And BLAS does not promise bit-identical results for identical columns at different
// positions of one GEMM (MKL's sgemm differs in the last bit, measured), so a candidate identical to
// the true one could score a hair lower and not count. Hence each distinct candidate row is scored once
// and counted with its multiplicity: identical candidates share one score and always tie.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace twoway_fast {

// One direction: the queries' candidates, de-duplicated, and which of them each query matches.
struct Candidates {
  at::Tensor rows;    // (u, d): the distinct candidate rows
  at::Tensor weight;  // (u,) int64: how many original candidates each distinct row stands for
  at::Tensor ptr;     // (queries + 1,) int64: query q matches idx[ptr[q] .. ptr[q+1])
  at::Tensor idx;     // int64 indices into rows, one per original matching candidate
};

// The block scores rows [row0, row0 + scores.size(0)) of the queries against every distinct candidate.
struct Block {
  const at::Tensor& scores;  // (rows, u), contiguous, float or double
  int64_t row0;
};

inline void check_retrieval_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group,
                                   int64_t tile_rows) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
              "retrieval_ranks: a and b must be (n, d) and (m, d) with one d, got shapes ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.size(0) > 0 && b.size(0) > 0, "retrieval_ranks: a and b need at least one row each, got ",
              a.sizes(), " and ", b.sizes());
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

// Validates group; one host synchronisation, fine for evaluation (never inside a training step).
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

// Candidates `x` for queries whose matches are x's rows orig_idx[ptr[q] .. ptr[q+1]).
inline Candidates distinct_candidates(const at::Tensor& x, at::Tensor ptr, const at::Tensor& orig_idx) {
  auto [rows, inverse, counts] = at::unique_dim(x, 0, /*sorted=*/false, /*return_inverse=*/true,
                                                /*return_counts=*/true);
  return {rows, counts, std::move(ptr), inverse.index_select(0, orig_idx)};
}

// Ranks of `queries` against `cand`, tile_rows queries per GEMM; the block lives until `count` has
// turned it into ranks, so memory stays O(tile_rows x candidates).
template <typename CountFn>
at::Tensor ranks_one_way(const at::Tensor& queries, const Candidates& cand, int64_t tile_rows, CountFn&& count) {
  const int64_t n = queries.size(0);
  auto ranks = at::empty({n}, queries.options().dtype(at::kLong));
  const auto candidates_t = cand.rows.t();
  for (int64_t row0 = 0; row0 < n; row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row0);
    const auto scores = at::mm(queries.narrow(0, row0, rows), candidates_t).contiguous();
    count(Block{scores, row0}, cand, ranks.narrow(0, row0, rows));
  }
  return ranks;
}

// Both directions. Half and bfloat16 inputs are scored in float32 (fewer rounding ties).
template <typename CountFn>
std::tuple<at::Tensor, at::Tensor> retrieval_ranks_tiled(const at::Tensor& a_in, const at::Tensor& b_in,
                                                         const at::Tensor& group, int64_t tile_rows,
                                                         CountFn&& count) {
  check_retrieval_inputs(a_in, b_in, group, tile_rows);
  const bool reduced = a_in.scalar_type() == at::kHalf || a_in.scalar_type() == at::kBFloat16;
  const auto a = reduced ? a_in.to(at::kFloat) : a_in.contiguous();
  const auto b = reduced ? b_in.to(at::kFloat) : b_in.contiguous();
  const auto per_a_row = matches_per_a_row(group, a.size(0));
  // a row i matches the b rows of group value i (several captions); b row j matches a row group[j].
  const auto a2b_ptr = at::cat({at::zeros({1}, group.options()), per_a_row.cumsum(0)});
  const auto a2b_idx = std::get<1>(group.sort(std::optional<bool>(true), 0));
  const auto to_b = distinct_candidates(b, a2b_ptr, a2b_idx);
  const auto to_a = distinct_candidates(a, at::arange(group.size(0) + 1, group.options()), group);
  return {ranks_one_way(a, to_b, tile_rows, count), ranks_one_way(b, to_a, tile_rows, count)};
}

}  // namespace twoway_fast
