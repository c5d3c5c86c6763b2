// CUDA kernel of the 2-Way loss (SPEC section 2), same signatures and results as
// csrc/cpu/twoway_loss.cpp. Forward: the decorrelation matrices C = H^T H / B (one GEMM each, in float
// for half and bfloat16 inputs, after the correlation form's column standardisation), then ONE
// reduction kernel over every sum the terms need (the three squared distances, ||C||_F^2 and
// ||diag C||^2 of both matrices, the weight decay's squares, the gamma penalty's inverse squares), in
// double, each thread block writing its partial sums, and a one-block kernel that adds the partials
// in a fixed order (no atomics: the same inputs give the same bits) and combines them into the terms.
// Backward reuses the two kernels for the norms of C. Nothing is read on the host, so a training step
// can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "twoway_loss_common.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

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

// One block of kSums threads: sums[j] = the partials of sum j added in block order; then, when terms
// is set, terms = (total, recon_x, recon_y, midway, decorr_x, decorr_y, weight_decay, gamma_penalty).
template <typename T>
__global__ void loss_finish_kernel(const double* __restrict__ partials, int blocks, double rows,
                                   const TermCoefficients coefficients, double* __restrict__ sums,
                                   T* __restrict__ terms) {
  __shared__ double s[kSums];
  const int j = threadIdx.x;
  if (j < kSums) {
    double total = 0;
    for (int b = 0; b < blocks; ++b) total += partials[b * kSums + j];
    s[j] = total;
    sums[j] = total;
  }
  __syncthreads();
  if (j != 0 || terms == nullptr) return;
  double t[kTerms];
  t[1] = s[kReconX] / rows;
  t[2] = s[kReconY] / rows;
  t[3] = s[kMidway] / rows;
  t[4] = sqrt(s[kFroX]) - sqrt(s[kDiagX]);
  t[5] = sqrt(s[kFroY]) - sqrt(s[kDiagY]);
  t[6] = s[kWeightDecay];
  t[7] = s[kGammaPenalty];
  t[0] = 0;
  for (int i = 1; i < kTerms; ++i) t[0] += coefficients.c[i] * t[i];
  for (int i = 0; i < kTerms; ++i) terms[i] = static_cast<T>(t[i]);
}

// Builds the segment table; the tensors must stay alive until the kernel is enqueued.
class SegmentTable {
 public:
  void add(const Tensor& a, const Tensor& b, int64_t n, int64_t stride, Op op, Sum sum, bool in_acc) {
    TORCH_CHECK(t_.count < kMaxSegments, "the CUDA twoway_loss takes at most ", kMaxSegments,
                " sums (8 + 5 n for n hidden positions): too many weights and gammas");
    Segment& s = t_.s[t_.count++];
    s.a = a.data_ptr();
    s.b = b.defined() ? b.data_ptr() : nullptr;
    s.n = n, s.stride = stride, s.op = op, s.sum = sum, s.in_acc = in_acc;
    s.first_tile = t_.tiles;
    t_.tiles += (n + kTile - 1) / kTile;
  }
  void add_all(const Tensor& a, Op op, Sum sum) { add(a, Tensor(), a.numel(), 1, op, sum, false); }
  // ||C||_F^2 and ||diag C||^2 of a contiguous (k, k) matrix C.
  void add_norms(const Tensor& c, Sum fro, Sum diag) {
    add(c, Tensor(), c.numel(), 1, kSquare, fro, true);
    add(c, Tensor(), c.size(0), c.size(0) + 1, kSquare, diag, true);
  }
  // sums (kSums,) in double and, when terms is set, the terms, on the current stream.
  void reduce(const Tensor& sums, const Tensor& terms, double rows, const TermCoefficients& coefficients,
              at::ScalarType dtype) const {
    const int blocks = static_cast<int>(std::clamp<int64_t>(t_.tiles, 1, kMaxBlocks));
    auto partials = at::empty({blocks, kSums}, sums.options());
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "twoway_loss_sums_cuda", [&] {
      loss_sums_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks, kThreads, 0, stream>>>(
          t_, partials.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      loss_finish_kernel<scalar_t><<<1, 32, 0, stream>>>(partials.data_ptr<double>(), blocks, rows, coefficients,
                                                           sums.data_ptr<double>(),
                                                           terms.defined() ? terms.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

 private:
  Segments t_{};
};

TermCoefficients term_coefficients(at::ArrayRef<double> coefficients) {
  TermCoefficients c{};
  for (int i = 1; i < kTerms; ++i) c.c[i] = coefficients[kCoefficientOf[i]];
  return c;
}

std::vector<Tensor> contiguous_all(TensorList list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

// C = H^T H / B in the accumulation type (float for half and bfloat16).
Tensor decorrelation_matrix(const Tensor& h, bool correlation, double eps) {
  return second_moment(decorrelation_input(h.to(stats_dtype(h.scalar_type())).contiguous(), correlation, eps));
}

std::tuple<Tensor, Tensor, Tensor> twoway_loss_cuda(const Tensor& x_in, const Tensor& y_in, const Tensor& x_hat_in,
                                                    const Tensor& y_hat_in, const Tensor& hx_in, const Tensor& hy_in,
                                                    const Tensor& hx_dec, const Tensor& hy_dec, TensorList weights,
                                                    TensorList gammas, at::ArrayRef<double> coefficients,
                                                    bool correlation, double eps) {
  check_loss_inputs(x_in, y_in, x_hat_in, y_hat_in, hx_in, hy_in, hx_dec, hy_dec, weights, gammas, coefficients);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The covariance GEMM runs in float for half and bfloat16 inputs: autocast must not recast it.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto x = x_in.contiguous(), y = y_in.contiguous(), x_hat = x_hat_in.contiguous();
  const auto y_hat = y_hat_in.contiguous(), hx = hx_in.contiguous(), hy = hy_in.contiguous();
  const auto cx = decorrelation_matrix(hx_dec, correlation, eps);
  const auto cy = decorrelation_matrix(hy_dec, correlation, eps);
  const auto w = contiguous_all(weights), g = contiguous_all(gammas);
  SegmentTable table;
  table.add(x, x_hat, x.numel(), 1, kSquaredDifference, kReconX, false);
  table.add(y, y_hat, y.numel(), 1, kSquaredDifference, kReconY, false);
  table.add(hx, hy, hx.numel(), 1, kSquaredDifference, kMidway, false);
  table.add_norms(cx, kFroX, kDiagX);
  table.add_norms(cy, kFroY, kDiagY);
  for (const auto& t : w) table.add_all(t, kSquare, kWeightDecay);
  for (const auto& t : g) {
    table.add_all(t, kSquare, kWeightDecay);
    table.add_all(t, kInverseSquare, kGammaPenalty);
  }
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  auto terms = at::empty({kTerms}, x.options());
  table.reduce(sums, terms, static_cast<double>(x.size(0)), term_coefficients(coefficients), x.scalar_type());
  return {terms, cx, cy};
}

// csrc/cpu/twoway_loss.cpp's decorrelation_grad, with the term's weight w and C's norms as 0-dim
// device tensors; a part whose norm is 0 contributes 0, chosen on the device. h and c in the
// accumulation type.
Tensor decorrelation_grad(const Tensor& h, const Tensor& c, const Tensor& fro, const Tensor& diag, const Tensor& w,
                          bool correlation, double eps) {
  const auto scale = w * (2.0 / h.size(0));
  const auto zero = at::zeros_like(fro);
  const auto H = decorrelation_input(h, correlation, eps);
  auto dH = at::mm(H, c) * at::where(fro > 0, scale / fro, zero);
  dH = dH - H * c.diagonal() * at::where(diag > 0, scale / diag, zero);
  if (!correlation) return dH;
  const auto inv_std = column_moments(h, eps).second;
  return (dH - dH.mean(0) - H * (dH * H).mean(0)) * inv_std;
}

using LossBackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>,
                                      std::vector<Tensor>>;

LossBackwardResult twoway_loss_backward_cuda(const Tensor& grad_terms, const Tensor& x, const Tensor& y,
                                             const Tensor& x_hat, const Tensor& y_hat, const Tensor& hx,
                                             const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                                             TensorList weights, TensorList gammas, const Tensor& cx_in,
                                             const Tensor& cy_in, at::ArrayRef<double> coefficients,
                                             bool correlation, double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients);
  TORCH_CHECK(grad_terms.dim() == 1 && grad_terms.size(0) == kTerms, "grad_terms must have shape (", kTerms,
              "), got ", grad_terms.sizes());
  TORCH_CHECK(grad_terms.device() == x.device(), "grad_terms is on ", grad_terms.device(), " but x is on ",
              x.device());
  const int64_t k = hx.size(1);
  TORCH_CHECK(cx_in.sizes() == at::IntArrayRef({k, k}) && cy_in.sizes() == cx_in.sizes(), "cx and cy must be (", k,
              ", ", k, "), got ", cx_in.sizes(), " and ", cy_in.sizes());
  TORCH_CHECK(cx_in.device() == x.device() && cy_in.device() == x.device(), "cx and cy must be on ", x.device(),
              ", got ", cx_in.device(), " and ", cy_in.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in forward
  const auto acc = stats_dtype(x.scalar_type());
  const auto cx = cx_in.to(acc).contiguous(), cy = cy_in.to(acc).contiguous();
  SegmentTable table;  // the norms of C
  table.add_norms(cx, kFroX, kDiagX);
  table.add_norms(cy, kFroY, kDiagY);
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  table.reduce(sums, Tensor(), static_cast<double>(x.size(0)), term_coefficients(coefficients), x.scalar_type());
  const auto norms = sums.sqrt();
  // Each term's weight in the gradient: through the total and directly (0-dim, on the device).
  const auto g = grad_terms.to(at::kDouble);
  std::array<Tensor, kTerms> w;
  for (int i = 1; i < kTerms; ++i) w[i] = g[0] * coefficients[kCoefficientOf[i]] + g[i];
  const double B = static_cast<double>(x.size(0));
  auto grad_x_hat = (x_hat - x) * (w[1] * (2.0 / B));
  auto grad_y_hat = (y_hat - y) * (w[2] * (2.0 / B));
  auto grad_hx = (hx - hy) * (w[3] * (2.0 / B));
  auto grad_hy = -grad_hx;
  auto grad_hx_dec = decorrelation_grad(hx_dec.to(acc).contiguous(), cx, norms[kFroX], norms[kDiagX], w[4],
                                        correlation, eps);
  auto grad_hy_dec = decorrelation_grad(hy_dec.to(acc).contiguous(), cy, norms[kFroY], norms[kDiagY], w[5],
                                        correlation, eps);
  std::vector<Tensor> grad_weights, grad_gammas;
  for (const auto& wt : weights) grad_weights.push_back(wt * (w[6] * 2.0));
  for (const auto& gm : gammas) grad_gammas.push_back(gm * (w[6] * 2.0) - gm.pow(-3) * (w[7] * 2.0));
  return {grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_dec.to(hx.scalar_type()),
          grad_hy_dec.to(hx.scalar_type()), grad_weights, grad_gammas};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) {
  m.impl("twoway_loss", &twoway_loss_cuda);
  m.impl("twoway_loss_backward", &twoway_loss_backward_cuda);
}

}  // namespace twoway_fast
