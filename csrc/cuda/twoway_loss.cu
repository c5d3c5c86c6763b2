// CUDA kernel of the 2-Way loss (docs/method.md#the-loss), same signatures and results as
// csrc/cpu/twoway_loss.cpp. Forward: the terms' matrices (twoway_loss_terms.cuh's loss_matrices: one small
// GEMM each, in float for half and bfloat16 inputs), then ONE
// reduction kernel over every sum the terms need and a one-block kernel that combines them
// (csrc/cuda/loss_sums.cuh; which sums: csrc/cuda/twoway_loss_terms.cuh); the log mid-way term adds a
// column-sum kernel before them. Backward: twoway_loss_terms.cuh's loss_gradients. Nothing is read on
// the host, so a training step can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "cuda/twoway_loss_terms.cuh"
#include "loss_terms.h"
#include "twoway_loss_common.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

std::vector<Tensor> contiguous_all(TensorList list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

LossResult twoway_loss_cuda(const Tensor& x_in, const Tensor& y_in, const Tensor& x_hat_in,
                                                    const Tensor& y_hat_in, const Tensor& hx_in, const Tensor& hy_in,
                                                    const Tensor& hx_dec, const Tensor& hy_dec, TensorList weights,
                                                    TensorList gammas, at::ArrayRef<double> coefficients,
                                                    int64_t options, double eps) {
  check_loss_inputs(x_in, y_in, x_hat_in, y_hat_in, hx_in, hy_in, hx_dec, hy_dec, weights, gammas, coefficients,
                    options);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The covariance GEMM runs in float for half and bfloat16 inputs: autocast must not recast it.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto x = x_in.contiguous(), y = y_in.contiguous(), x_hat = x_hat_in.contiguous();
  const auto y_hat = y_hat_in.contiguous(), hx = hx_in.contiguous(), hy = hy_in.contiguous();
  const auto m = loss_matrices(hx_dec, hy_dec, has(options, option::kCorrelation), eps);
  const auto w = contiguous_all(weights), g = contiguous_all(gammas);
  const SegmentTable table = loss_forward_table(x, y, x_hat, y_hat, hx, hy, m, w, g, options);
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  // The terms in float for half and bfloat16 inputs: a sum of squares soon passes float16's 65504.
  auto terms = at::empty({kTerms}, x.options().dtype(stats_dtype(x.scalar_type())));
  reduce(table, sums, terms, static_cast<double>(x.size(0)), LossCoefficients(coefficients), options,
         x.scalar_type(), term_columns(hx, hy, options));
  return {terms, m.cx, m.cy};
}

LossBackwardResult twoway_loss_backward_cuda(const Tensor& grad_terms, const Tensor& x, const Tensor& y,
                                             const Tensor& x_hat, const Tensor& y_hat, const Tensor& hx,
                                             const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                                             TensorList weights, TensorList gammas, const Tensor& cx_in,
                                             const Tensor& cy_in, at::ArrayRef<double> coefficients,
                                             int64_t options, double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients, options);
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
  return loss_gradients(grad_terms, x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas,
                        cx_in.to(acc).contiguous(), cy_in.to(acc).contiguous(), coefficients, options, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) {
  m.impl("twoway_loss", &twoway_loss_cuda);
  m.impl("twoway_loss_backward", &twoway_loss_backward_cuda);
}

}  // namespace twoway_fast
