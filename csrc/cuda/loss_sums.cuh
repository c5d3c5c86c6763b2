// The reduction kernels of the CUDA loss (twoway_loss.cu): ONE kernel over every sum the 2-Way loss
// terms need (the three squared distances, ||C||_F^2 and ||diag C||^2 of both decorrelation matrices,
// the weight decay's squares, the gamma penalty's inverse squares), in double, each thread block
// writing its partial sums; and a one-block kernel that adds the partials in a fixed order (no
// atomics: the same inputs give the same bits) and combines them into the terms. The work is a table
// of segments (one tensor's contribution each) cut into tiles of kTile elements; thread blocks take
// tiles in turn. The log mid-way term (docs/method.md#loss-variants) needs per-column sums instead, of
// (hx - hy)^2: a column-sum kernel writes them and the finishing kernel takes their logs. Host-side table
// building is here too, so tests/cuda_emulation can run the kernels.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "twoway_loss_common.h"

namespace twoway_fast {

// The sums the reduction kernel produces, in this order.
enum Sum : int { kReconX, kReconY, kMidway, kFroX, kDiagX, kFroY, kDiagY, kWeightDecay, kGammaPenalty, kSums };
enum Op : int { kSquaredDifference, kSquare, kInverseSquare };

// One tensor's contribution: sum over i < n of op(a[i * stride], b[i * stride]) into sums[sum]. a and b
// hold the inputs' dtype T, or the accumulation type A (float or double) when in_acc (the matrices C).
struct Segment {
  const void* a;
  const void* b;  // kSquaredDifference only
  int64_t n, stride;
  int64_t first_tile;  // tiles of the segments before this one
  int op, sum;
  bool in_acc;
};

// Passed by value as a kernel argument (under 4 KB): 8 + 5 n segments for n hidden positions.
constexpr int kMaxSegments = 64;
struct Segments {
  Segment s[kMaxSegments];
  int count;
  int64_t tiles;
};

constexpr int kTile = 8192;      // elements of one segment a thread block reduces at a time
constexpr int kThreads = 256;
constexpr int kMaxBlocks = 256;  // a fixed bound, so the partials' layout and the sums' bits do not vary

template <typename T, typename A>
__device__ __forceinline__ double element(const Segment& s, int64_t i) {
  const int64_t o = i * s.stride;
  const double a = s.in_acc ? static_cast<double>(static_cast<const A*>(s.a)[o])
                            : static_cast<double>(static_cast<const T*>(s.a)[o]);
  if (s.op == kSquaredDifference) {
    const double d = a - static_cast<double>(static_cast<const T*>(s.b)[o]);
    return d * d;
  }
  return s.op == kSquare ? a * a : 1.0 / (a * a);
}

// partials[block][sum]: this block's part of every sum.
template <typename T, typename A>
__global__ void loss_sums_kernel(const Segments segments, double* __restrict__ partials) {
  double acc[kSums];  // every loop over it is unrolled, so it stays in registers
#pragma unroll
  for (int j = 0; j < kSums; ++j) acc[j] = 0;
  for (int64_t tile = blockIdx.x; tile < segments.tiles; tile += gridDim.x) {
    int k = 0;  // the segment this tile belongs to (empty segments share their successor's first_tile)
    while (k + 1 < segments.count && segments.s[k + 1].first_tile <= tile) ++k;
    const Segment s = segments.s[k];  // a copy: no address of the kernel argument escapes
    const int64_t begin = (tile - s.first_tile) * kTile, end = begin + kTile < s.n ? begin + kTile : s.n;
    double part = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) part += element<T, A>(s, i);
#pragma unroll
    for (int j = 0; j < kSums; ++j)
      if (j == s.sum) acc[j] += part;
  }
  __shared__ double warp_sums[kThreads / 32];
#pragma unroll
  for (int j = 0; j < kSums; ++j) {
    double v = acc[j];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0;
      for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
      partials[blockIdx.x * kSums + j] = total;
    }
    __syncthreads();
  }
}

// Each term's coefficient in the total, by term index (entry 0 unused).
struct TermCoefficients {
  double c[kTerms];
};

// The log mid-way term's column sums: sums[i] = sum over the rows of (a[r][i] - b[r][i])^2 in double, for
// row-major (rows, cols) a and b of dtype T. A block is kColumnWidth columns (a warp reads 32 adjacent
// elements of a row) by kColumnStripes row stripes, whose sums are added in stripe order: one order, so
// the same inputs give the same bits. Grid: ceil(cols / kColumnWidth) blocks.
constexpr int kColumnWidth = 32;
constexpr int kColumnStripes = 8;

template <typename T>
__global__ void column_sums_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t rows, int64_t cols,
                                   double* __restrict__ sums) {
  __shared__ double stripes[kColumnStripes][kColumnWidth];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColumnWidth + threadIdx.x;
  double part = 0;
  if (col < cols)
    for (int64_t r = threadIdx.y; r < rows; r += kColumnStripes) {
      const double d = static_cast<double>(a[r * cols + col]) - static_cast<double>(b[r * cols + col]);
      part += d * d;
    }
  stripes[threadIdx.y][threadIdx.x] = part;
  __syncthreads();
  if (threadIdx.y != 0 || col >= cols) return;
  double total = 0;
  for (int s = 0; s < kColumnStripes; ++s) total += stripes[s][threadIdx.x];
  sums[col] = total;
}

// One block of 32 threads (one warp, at least kSums): sums[j] = the partials of sum j added in block
// order; then, when terms is set, terms = (total, recon_x, recon_y, midway, decorr_x, decorr_y,
// weight_decay, gamma_penalty). With midway_columns (cols column sums of column_sums_kernel) the midway
// term is the log form, sum_i log(midway_columns[i] / rows + kMidwayLogEps), each lane adding every 32nd
// column and the lanes added in a fixed tree; without, ||hx - hy||_F^2 / rows from sums[kMidway].
template <typename T>
__global__ void loss_finish_kernel(const double* __restrict__ partials, int blocks, double rows,
                                   const TermCoefficients coefficients, const double* __restrict__ midway_columns,
                                   int64_t cols, double* __restrict__ sums, T* __restrict__ terms) {
  __shared__ double s[kSums];
  const int j = threadIdx.x;
  if (j < kSums) {
    double total = 0;
    for (int b = 0; b < blocks; ++b) total += partials[b * kSums + j];
    s[j] = total;
    sums[j] = total;
  }
  double log_midway = 0;
  if (midway_columns != nullptr) {  // uniform over the block: every lane reaches the shuffles
    for (int64_t i = j; i < cols; i += 32) log_midway += log(midway_columns[i] / rows + kMidwayLogEps);
    for (int offset = 16; offset > 0; offset /= 2) log_midway += __shfl_down_sync(0xffffffffu, log_midway, offset);
  }
  __syncthreads();
  if (j != 0 || terms == nullptr) return;
  double t[kTerms];
  t[1] = s[kReconX] / rows;
  t[2] = s[kReconY] / rows;
  t[3] = midway_columns != nullptr ? log_midway : s[kMidway] / rows;
  t[4] = sqrt(s[kFroX]) - sqrt(s[kDiagX]);
  t[5] = sqrt(s[kFroY]) - sqrt(s[kDiagY]);
  t[6] = s[kWeightDecay];
  t[7] = s[kGammaPenalty];
  t[0] = 0;
  for (int i = 1; i < kTerms; ++i) t[0] += coefficients.c[i] * t[i];
  for (int i = 0; i < kTerms; ++i) terms[i] = static_cast<T>(t[i]);
}

// The segment table of a reduction; the tensors must stay alive until the kernel is enqueued.
class SegmentTable {
 public:
  void add(const at::Tensor& a, const at::Tensor& b, int64_t n, int64_t stride, Op op, Sum sum, bool in_acc) {
    TORCH_CHECK(t_.count < kMaxSegments, "the CUDA twoway_loss takes at most ", kMaxSegments,
                " sums (8 + 5 n for n hidden positions): too many weights and gammas");
    Segment& s = t_.s[t_.count++];
    s.a = a.data_ptr();
    s.b = b.defined() ? b.data_ptr() : nullptr;
    s.n = n, s.stride = stride, s.op = op, s.sum = sum, s.in_acc = in_acc;
    s.first_tile = t_.tiles;
    t_.tiles += (n + kTile - 1) / kTile;
  }
  void add_all(const at::Tensor& a, Op op, Sum sum) { add(a, at::Tensor(), a.numel(), 1, op, sum, false); }
  // ||C||_F^2 and ||diag C||^2 of a contiguous (k, k) matrix C.
  void add_norms(const at::Tensor& c, Sum fro, Sum diag) {
    add(c, at::Tensor(), c.numel(), 1, kSquare, fro, true);
    add(c, at::Tensor(), c.size(0), c.size(0) + 1, kSquare, diag, true);
  }
  const Segments& segments() const { return t_; }
  // Thread blocks of the sums kernel: a fixed bound, so the partials' layout does not vary.
  int blocks() const { return static_cast<int>(std::clamp<int64_t>(t_.tiles, 1, kMaxBlocks)); }

 private:
  Segments t_{};
};

inline TermCoefficients term_coefficients(at::ArrayRef<double> coefficients) {
  TermCoefficients c{};
  for (int i = 1; i < kTerms; ++i) c.c[i] = coefficients[kCoefficientOf[i]];
  return c;
}

// The forward's table: every sum of the terms (sums[kMidway] stays 0 with midway_log: the log form takes
// column sums). All tensors contiguous; cx and cy in the accumulation type (float for half and bfloat16),
// the others in x's dtype.
inline SegmentTable loss_forward_table(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_hat,
                                       const at::Tensor& y_hat, const at::Tensor& hx, const at::Tensor& hy,
                                       const at::Tensor& cx, const at::Tensor& cy,
                                       const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& gammas,
                                       bool midway_log) {
  SegmentTable table;
  table.add(x, x_hat, x.numel(), 1, kSquaredDifference, kReconX, false);
  table.add(y, y_hat, y.numel(), 1, kSquaredDifference, kReconY, false);
  if (!midway_log) table.add(hx, hy, hx.numel(), 1, kSquaredDifference, kMidway, false);
  table.add_norms(cx, kFroX, kDiagX);
  table.add_norms(cy, kFroY, kDiagY);
  for (const auto& t : weights) table.add_all(t, kSquare, kWeightDecay);
  for (const auto& t : gammas) {
    table.add_all(t, kSquare, kWeightDecay);
    table.add_all(t, kInverseSquare, kGammaPenalty);
  }
  return table;
}

}  // namespace twoway_fast
