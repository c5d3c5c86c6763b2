// CUDA kernel of the 2-Way loss (SPEC section 2), same signatures and results as
// csrc/cpu/twoway_loss.cpp. A first version composed of ATen ops, not yet one custom reduction
// kernel: each term is its own reduction, every sum in double as on the CPU, and the terms and the
// gradient's per-term weights stay on the device as 0-dim tensors, so nothing synchronises with the
// host (a training step can be captured in a CUDA graph).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <utility>
#include <vector>

#include "twoway_loss_common.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

// sum of t's squares in double, a 0-dim tensor on t's device.
Tensor sum_squares(const Tensor& t) { return t.to(at::kDouble).square().sum(); }

Tensor squared_distance(const Tensor& a, const Tensor& b) { return sum_squares(a.to(at::kDouble) - b) / a.size(0); }

// (||C||_F, ||diag C||_2) in double.
std::pair<Tensor, Tensor> norms(const Tensor& c) { return {sum_squares(c).sqrt(), sum_squares(c.diagonal()).sqrt()}; }

std::tuple<Tensor, Tensor, Tensor> twoway_loss_cuda(const Tensor& x, const Tensor& y, const Tensor& x_hat,
                                                    const Tensor& y_hat, const Tensor& hx, const Tensor& hy,
                                                    const Tensor& hx_dec, const Tensor& hy_dec, TensorList weights,
                                                    TensorList gammas, at::ArrayRef<double> coefficients,
                                                    bool correlation, double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients);
  const c10::cuda::CUDAGuard guard(x.device());
  // The covariance GEMM runs in float for half and bfloat16 inputs: autocast must not recast it.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto acc = stats_dtype(x.scalar_type());
  std::array<Tensor, kTerms> t;
  t[1] = squared_distance(x, x_hat);
  t[2] = squared_distance(y, y_hat);
  t[3] = squared_distance(hx, hy);
  const auto cx = second_moment(decorrelation_input(hx_dec.to(acc).contiguous(), correlation, eps));
  const auto cy = second_moment(decorrelation_input(hy_dec.to(acc).contiguous(), correlation, eps));
  const auto [fx, dx] = norms(cx);
  const auto [fy, dy] = norms(cy);
  t[4] = fx - dx;
  t[5] = fy - dy;
  const auto zero = at::zeros({}, x.options().dtype(at::kDouble));
  t[6] = zero, t[7] = zero;
  for (const auto& w : weights) t[6] = t[6] + sum_squares(w);
  for (const auto& g : gammas) {
    t[6] = t[6] + sum_squares(g);
    t[7] = t[7] + g.to(at::kDouble).square().reciprocal().sum();
  }
  t[0] = zero;
  for (int i = 1; i < kTerms; ++i) t[0] = t[0] + t[i] * coefficients[kCoefficientOf[i]];
  return {at::stack(t).to(x.scalar_type()), cx, cy};
}

// csrc/cpu/twoway_loss.cpp's decorrelation_grad with the term's weight w a 0-dim device tensor; a
// part whose norm is 0 contributes 0, chosen on the device.
Tensor decorrelation_grad(const Tensor& h, const Tensor& c, const Tensor& w, bool correlation, double eps) {
  const auto [fro, diag] = norms(c);
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
                                             TensorList weights, TensorList gammas, const Tensor& cx,
                                             const Tensor& cy, at::ArrayRef<double> coefficients, bool correlation,
                                             double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients);
  TORCH_CHECK(grad_terms.dim() == 1 && grad_terms.size(0) == kTerms, "grad_terms must have shape (", kTerms,
              "), got ", grad_terms.sizes());
  TORCH_CHECK(grad_terms.device() == x.device(), "grad_terms is on ", grad_terms.device(), " but x is on ",
              x.device());
  const int64_t k = hx.size(1);
  TORCH_CHECK(cx.sizes() == at::IntArrayRef({k, k}) && cy.sizes() == cx.sizes(), "cx and cy must be (", k, ", ",
              k, "), got ", cx.sizes(), " and ", cy.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in forward
  const auto acc = stats_dtype(x.scalar_type());
  // Each term's weight in the gradient: through the total and directly (0-dim, on the device).
  const auto g = grad_terms.to(at::kDouble);
  std::array<Tensor, kTerms> w;
  for (int i = 1; i < kTerms; ++i) w[i] = g[0] * coefficients[kCoefficientOf[i]] + g[i];
  const double B = static_cast<double>(x.size(0));
  auto grad_x_hat = (x_hat - x) * (w[1] * (2.0 / B));
  auto grad_y_hat = (y_hat - y) * (w[2] * (2.0 / B));
  auto grad_hx = (hx - hy) * (w[3] * (2.0 / B));
  auto grad_hy = -grad_hx;
  auto grad_hx_dec = decorrelation_grad(hx_dec.to(acc).contiguous(), cx.to(acc), w[4], correlation, eps);
  auto grad_hy_dec = decorrelation_grad(hy_dec.to(acc).contiguous(), cy.to(acc), w[5], correlation, eps);
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
