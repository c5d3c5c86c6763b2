// The device-independent half of retrieval_ranks: input checks, the match lists and the tile loop.
// The CPU and CUDA kernels supply only the counting pass over one block of similarities.
//
// Rule: rank = 1 + #non-matching candidates c with !(s_c < best), best = the highest score among the
// query's matching candidates. So ties count against the query, and a NaN score (a candidate's, or
// the best one's) counts against it too: bad inputs never look like good retrieval.
//
// `best` is read from the very block the counts compare it with (one GEMM), never recomputed apart:
// a candidate identical to the true one gets a bit-identical score and is counted as a tie.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace twoway_fast {

// For each query q, its matching candidates are idx[ptr[q] .. ptr[q+1]).
struct MatchLists {
  at::Tensor ptr, idx;  // int64, on the inputs' device
};

// The block scores rows [row0, row0 + block.size(0)) of the queries against every candidate.
struct Block {
  const at::Tensor& scores;  // (rows, candidates), contiguous, float or double
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

// Validates group (one host synchronisation: fine for evaluation, never inside a training step) and
// builds both directions' match lists: a row -> its b rows (several captions), b row -> its a row.
inline std::tuple<MatchLists, MatchLists> match_lists(const at::Tensor& group, int64_t n) {
  const int64_t lo = group.min().item<int64_t>(), hi = group.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < n, "retrieval_ranks: group values must index rows of a (0..", n - 1, "), got ",
              lo, "..", hi);
  const auto counts = at::bincount(group, {}, n);
  const int64_t fewest = counts.min().item<int64_t>();
  TORCH_CHECK(fewest > 0, "retrieval_ranks: every row of a needs at least one row of b in group; ",
              (counts == 0).sum().item<int64_t>(), " rows have none");
  const auto zero = at::zeros({1}, group.options());
  MatchLists a2b{at::cat({zero, counts.cumsum(0)}), std::get<1>(group.sort(std::optional<bool>(true), 0))};
  MatchLists b2a{at::arange(group.size(0) + 1, group.options()), group.contiguous()};
  return {a2b, b2a};
}

// Ranks of `queries` against `candidates`, tile_rows queries per GEMM; the block lives until `count`
// has turned it into ranks, so memory stays O(tile_rows x candidates).
template <typename CountFn>
at::Tensor ranks_one_way(const at::Tensor& queries, const at::Tensor& candidates, const MatchLists& match,
                         int64_t tile_rows, CountFn&& count) {
  const int64_t n = queries.size(0);
  auto ranks = at::empty({n}, queries.options().dtype(at::kLong));
  const auto candidates_t = candidates.t();
  for (int64_t row0 = 0; row0 < n; row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row0);
    const auto scores = at::mm(queries.narrow(0, row0, rows), candidates_t).contiguous();
    count(Block{scores, row0}, match, ranks.narrow(0, row0, rows));
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
  const auto a = reduced ? a_in.to(at::kFloat) : a_in;
  const auto b = reduced ? b_in.to(at::kFloat) : b_in;
  const auto [a2b, b2a] = match_lists(group, a.size(0));
  return {ranks_one_way(a, b, a2b, tile_rows, count), ranks_one_way(b, a, b2a, tile_rows, count)};
}

}  // namespace twoway_fast
