// The reduction kernels of the CUDA loss (twoway_loss.cu): ONE kernel over every sum the 2-Way loss
// terms need (loss_terms.h's sums; which tensors feed which sum: twoway_loss_terms.cuh), in double, each
// thread block writing its partial sums; and a one-block kernel that adds the partials in a fixed order
// (no atomics: the same inputs give the same bits) and turns them into the terms (loss_terms.h's
// terms_from_sums). The work is a table of segments (one tensor's contribution each) cut into tiles of
// kTile elements; thread blocks take tiles in turn. The log mid-way term (docs/method.md#loss-variants)
// needs per-column sums instead, of (hx - hy)^2: a column-sum kernel writes them and the finishing kernel
// takes their logs. Host-side table building is here too, so tests/cuda_emulation can run the kernels;
// the launchers only under nvcc.
#pragma once
#include <ATen/ATen.h>

#if defined(__CUDACC__)
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <vector>

#include "loss_terms.h"

namespace twoway_fast {

enum Op : int { kSquaredDifference, kSquare, kInverseSquare, kValue };

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

// Passed by value as a kernel argument: 14 + 5 n segments for n hidden positions (the fixed terms, and
// per position a weight and the x and y gammas twice). CUDA 12.1 and later on Volta and later take up to
// 32764 bytes of arguments (4 KB before), which 256 segments fit: 48 hidden positions.
constexpr int kMaxSegments = 256;
struct Segments {
  Segment s[kMaxSegments];
  int count;
  int64_t tiles;
};
static_assert(sizeof(Segments) <= 32764, "the segment table must fit CUDA's kernel argument space");

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
  if (s.op == kValue) return a;
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

// The ops' coefficients, passed by value to the finishing kernel.
struct LossCoefficients {
  double c[kCoefficients];
  explicit LossCoefficients(at::ArrayRef<double> from) { std::copy(from.begin(), from.end(), c); }
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
// order; then, when terms is set, the terms (terms_from_sums). With midway_columns (cols column sums of
// column_sums_kernel) the log mid-way term's sum_i log(midway_columns[i] / rows + kMidwayLogEps), each
// lane adding every 32nd column and the lanes added in a fixed tree.
template <typename T>
__global__ void loss_finish_kernel(const double* __restrict__ partials, int blocks, double rows,
                                   const LossCoefficients coefficients, int64_t options,
                                   const double* __restrict__ midway_columns, int64_t cols, double* __restrict__ sums,
                                   T* __restrict__ terms) {
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
  terms_from_sums(s, rows, options, log_midway, coefficients.c, t);
  for (int i = 0; i < kTerms; ++i) terms[i] = static_cast<T>(t[i]);
}

// The segment table of a reduction; the tensors must stay alive until the kernel is enqueued.
class SegmentTable {
 public:
  void add(const at::Tensor& a, const at::Tensor& b, int64_t n, int64_t stride, Op op, int sum, bool in_acc) {
    TORCH_CHECK(t_.count < kMaxSegments, "the CUDA twoway_loss takes at most ", kMaxSegments,
                " summed tensors (14, and 5 per hidden position): too many hidden positions");
    Segment& s = t_.s[t_.count++];
    s.a = a.data_ptr();
    s.b = b.defined() ? b.data_ptr() : nullptr;
    s.n = n, s.stride = stride, s.op = op, s.sum = sum, s.in_acc = in_acc;
    s.first_tile = t_.tiles;
    t_.tiles += (n + kTile - 1) / kTile;
  }
  void add_all(const at::Tensor& a, Op op, int sum) { add(a, at::Tensor(), a.numel(), 1, op, sum, false); }
  // ||C||_F^2 and ||diag C||^2 of a contiguous (k, k) matrix C.
  void add_norms(const at::Tensor& c, int fro, int diag) {
    add(c, at::Tensor(), c.numel(), 1, kSquare, fro, true);
    add(c, at::Tensor(), c.size(0), c.size(0) + 1, kSquare, diag, true);
  }
  // The sum of every element and of the diagonal of a contiguous (B, B) matrix E.
  void add_sums(const at::Tensor& e, int all, int diag) {
    add(e, at::Tensor(), e.numel(), 1, kValue, all, true);
    add(e, at::Tensor(), e.size(0), e.size(0) + 1, kValue, diag, true);
  }
  const Segments& segments() const { return t_; }
  // Thread blocks of the sums kernel: a fixed bound, so the partials' layout does not vary.
  int blocks() const { return static_cast<int>(std::clamp<int64_t>(t_.tiles, 1, kMaxBlocks)); }

 private:
  Segments t_{};
};

#if defined(__CUDACC__)
// sums (kSums,) in double and, when terms is set (in the accumulation type), the terms, on the current
// stream; the log mid-way term from midway_columns (midway_column_sums) when defined.
inline void reduce(const SegmentTable& table, const at::Tensor& sums, const at::Tensor& terms, double rows,
                   const LossCoefficients& coefficients, int64_t options, at::ScalarType dtype,
                   const at::Tensor& midway_columns = at::Tensor()) {
  const int blocks = table.blocks();
  auto partials = at::empty({blocks, kSums}, sums.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "twoway_loss_sums_cuda", [&] {
    loss_sums_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks, kThreads, 0, stream>>>(
        table.segments(), partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    using A = at::opmath_type<scalar_t>;
    const bool columns = midway_columns.defined();
    loss_finish_kernel<A><<<1, 32, 0, stream>>>(
        partials.data_ptr<double>(), blocks, rows, coefficients, options,
        columns ? midway_columns.data_ptr<double>() : nullptr, columns ? midway_columns.numel() : 0,
        sums.data_ptr<double>(), terms.defined() ? terms.data_ptr<A>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// column_sums_kernel's sums of (a - b)^2, (cols,) in double, on the current stream; a, b contiguous.
inline at::Tensor midway_column_sums(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), cols = a.size(1);
  auto sums = at::empty({cols}, a.options().dtype(at::kDouble));
  const auto blocks = static_cast<unsigned>((cols + kColumnWidth - 1) / kColumnWidth);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "twoway_loss_midway_cuda", [&] {
    column_sums_kernel<scalar_t><<<blocks, dim3(kColumnWidth, kColumnStripes), 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), rows, cols, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sums;
}
#endif

}  // namespace twoway_fast
