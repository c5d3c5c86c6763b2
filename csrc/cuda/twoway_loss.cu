// CUDA kernel of the 2-Way loss (docs/method.md#the-loss), same signatures and results as
// csrc/cpu/twoway_loss.cpp. Forward: the decorrelation matrices C = H^T H / B (one GEMM each, in float
// for half and bfloat16 inputs, after the correlation form's column standardisation), then ONE
// reduction kernel over every sum the terms need and a one-block kernel that combines them
// (csrc/cuda/loss_sums.cuh); the log mid-way term adds a column-sum kernel before them. Backward reuses
// the kernels for the norms of C (and the column sums). Nothing is read on the host, so a training step
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

#include "cuda/loss_sums.cuh"
#include "twoway_loss_common.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

// sums (kSums,) in double and, when terms is set (in the accumulation type), the terms, on the
// current stream; the midway term in the log form from midway_columns (midway_column_sums) when defined.
void reduce(const SegmentTable& table, const Tensor& sums, const Tensor& terms, double rows,
            const TermCoefficients& coefficients, at::ScalarType dtype, const Tensor& midway_columns = Tensor()) {
  const int blocks = table.blocks();
  auto partials = at::empty({blocks, kSums}, sums.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "twoway_loss_sums_cuda", [&] {
    loss_sums_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks, kThreads, 0, stream>>>(
        table.segments(), partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    using A = at::opmath_type<scalar_t>;
    const bool log_form = midway_columns.defined();
    loss_finish_kernel<A><<<1, 32, 0, stream>>>(
        partials.data_ptr<double>(), blocks, rows, coefficients,
        log_form ? midway_columns.data_ptr<double>() : nullptr, log_form ? midway_columns.numel() : 0,
        sums.data_ptr<double>(), terms.defined() ? terms.data_ptr<A>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::vector<Tensor> contiguous_all(TensorList list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

// The log mid-way term's column sums of (hx - hy)^2 (column_sums_kernel), (k,) in double, on the current
// stream: the forward takes their logs, the backward its per-column factors from them. hx, hy contiguous.
Tensor midway_column_sums(const Tensor& hx, const Tensor& hy) {
  const int64_t rows = hx.size(0), cols = hx.size(1);
  auto sums = at::empty({cols}, hx.options().dtype(at::kDouble));
  const auto blocks = static_cast<unsigned>((cols + kColumnWidth - 1) / kColumnWidth);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hx.scalar_type(), "twoway_loss_midway_cuda", [&] {
    column_sums_kernel<scalar_t><<<blocks, dim3(kColumnWidth, kColumnStripes), 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        hx.data_ptr<scalar_t>(), hy.data_ptr<scalar_t>(), rows, cols, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sums;
}

// C = H^T H / B in the accumulation type (float for half and bfloat16).
Tensor decorrelation_matrix(const Tensor& h, bool correlation, double eps) {
  return second_moment(decorrelation_input(h.to(stats_dtype(h.scalar_type())).contiguous(), correlation, eps));
}

std::tuple<Tensor, Tensor, Tensor> twoway_loss_cuda(const Tensor& x_in, const Tensor& y_in, const Tensor& x_hat_in,
                                                    const Tensor& y_hat_in, const Tensor& hx_in, const Tensor& hy_in,
                                                    const Tensor& hx_dec, const Tensor& hy_dec, TensorList weights,
                                                    TensorList gammas, at::ArrayRef<double> coefficients,
                                                    bool midway_log, bool correlation, double eps) {
  check_loss_inputs(x_in, y_in, x_hat_in, y_hat_in, hx_in, hy_in, hx_dec, hy_dec, weights, gammas, coefficients);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The covariance GEMM runs in float for half and bfloat16 inputs: autocast must not recast it.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto x = x_in.contiguous(), y = y_in.contiguous(), x_hat = x_hat_in.contiguous();
  const auto y_hat = y_hat_in.contiguous(), hx = hx_in.contiguous(), hy = hy_in.contiguous();
  const auto cx = decorrelation_matrix(hx_dec, correlation, eps);
  const auto cy = decorrelation_matrix(hy_dec, correlation, eps);
  const auto w = contiguous_all(weights), g = contiguous_all(gammas);
  const SegmentTable table = loss_forward_table(x, y, x_hat, y_hat, hx, hy, cx, cy, w, g, midway_log);
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  // The terms in float for half and bfloat16 inputs: a sum of squares soon passes float16's 65504.
  auto terms = at::empty({kTerms}, x.options().dtype(stats_dtype(x.scalar_type())));
  reduce(table, sums, terms, static_cast<double>(x.size(0)), term_coefficients(coefficients), x.scalar_type(),
         midway_log ? midway_column_sums(hx, hy) : Tensor());
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
                                             bool midway_log, bool correlation, double eps) {
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
  reduce(table, sums, Tensor(), static_cast<double>(x.size(0)), term_coefficients(coefficients), x.scalar_type());
  const auto norms = sums.sqrt();
  // Each term's weight in the gradient: through the total and directly (0-dim, on the device).
  const auto g = grad_terms.to(at::kDouble);
  std::array<Tensor, kTerms> w;
  for (int i = 1; i < kTerms; ++i) w[i] = g[0] * coefficients[kCoefficientOf[i]] + g[i];
  const double B = static_cast<double>(x.size(0));
  auto grad_x_hat = (x_hat - x) * (w[1] * (2.0 / B));
  auto grad_y_hat = (y_hat - y) * (w[2] * (2.0 / B));
  auto midway_scale = w[3] * (2.0 / B);  // 0-dim; in the log form per column, divided by d_i + eps
  if (midway_log) {
    const auto d = midway_column_sums(hx.contiguous(), hy.contiguous()) / B;
    midway_scale = (midway_scale / (d + kMidwayLogEps)).to(hx.scalar_type());
  }
  auto grad_hx = (hx - hy) * midway_scale;
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
