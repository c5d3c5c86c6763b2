// CPU kernel of the 2-Way loss (SPEC section 2), forward and backward: one pass per distance, the
// decorrelation's matrix C as one small GEMM, sums in double. terms = (total, recon_x, recon_y,
// midway, decorr_x, decorr_y, weight_decay, gamma_penalty); coefficients = (lx, ly, lh, lc, wd, lg).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "twoway_loss_common.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

template <typename T>
double sum_squared_difference(const T* a, const T* b, int64_t n) {
  // Pointers by value: through a by-reference capture the vectoriser cannot see them invariant.
  return at::parallel_reduce(0, n, 1 << 17, 0.0, [a, b](int64_t i0, int64_t i1, double acc) {
#pragma omp simd reduction(+ : acc)  // several accumulators: a single one is bound by the add latency
    for (int64_t i = i0; i < i1; ++i) {
      const double d = static_cast<double>(a[i]) - b[i];
      acc += d * d;
    }
    return acc;
  }, std::plus<double>());
}

// sum_i f(t_i) in double, one pass, no temporaries (the weight-decay terms run over every weight).
template <typename T, typename F>
double sum_over(const T* v, int64_t n, F f) {
  return at::parallel_reduce(0, n, 1 << 17, 0.0, [v, f](int64_t i0, int64_t i1, double acc) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = i0; i < i1; ++i) acc += f(static_cast<double>(v[i]));
    return acc;
  }, std::plus<double>());
}

template <typename F>
double sum_over(const Tensor& t_in, F f) {
  const auto t = t_in.contiguous();
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "twoway_loss_sum",
                             [&] { sum = sum_over(t.data_ptr<scalar_t>(), t.numel(), f); });
  return sum;
}

// (||C||_F, ||diag C||_2) in double, one pass over C.
std::pair<double, double> norms(const Tensor& c) {
  const auto square = [](double v) { return v * v; };
  return {std::sqrt(sum_over(c, square)), std::sqrt(sum_over(c.diagonal(), square))};
}

double squared_distance(const Tensor& a_in, const Tensor& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "twoway_loss_distance", [&] {
    sum = sum_squared_difference(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), a.numel());
  });
  return sum / a.size(0);
}

// The decorrelation's input H (twoway_loss_common.h's decorrelation_input: h, or its columns
// standardised) and, in the correlation form, inv_std = 1 / sqrt(var_biased + eps) per column: the
// same arithmetic as column_moments (moments in double, H in h's dtype) in two passes over h, where
// the ATen composition took about ten small ops, each a dispatch and an allocation.
std::pair<Tensor, Tensor> decorrelation_input_cpu(const Tensor& h_in, bool correlation, double eps) {
  const auto h = h_in.contiguous();
  if (!correlation) return {h, Tensor()};
  const int64_t rows = h.size(0), cols = h.size(1);
  auto H = at::empty_like(h), inv_std = at::empty({cols}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "twoway_loss_standardise", [&] {
    const scalar_t* src = h.data_ptr<scalar_t>();
    scalar_t* dst = H.data_ptr<scalar_t>();
    scalar_t* inv = inv_std.data_ptr<scalar_t>();
    std::vector<double> mean(cols, 0.0), var(cols, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) mean[j] += src[r * cols + j];
    for (int64_t j = 0; j < cols; ++j) mean[j] /= rows;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        const double d = src[r * cols + j] - mean[j];
        var[j] += d * d;
      }
    std::vector<scalar_t> mean_t(cols);
    for (int64_t j = 0; j < cols; ++j) {
      mean_t[j] = static_cast<scalar_t>(mean[j]);
      inv[j] = static_cast<scalar_t>(1.0 / std::sqrt(var[j] / rows + eps));
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) dst[r * cols + j] = (src[r * cols + j] - mean_t[j]) * inv[j];
  });
  return {H, inv_std};
}

std::tuple<Tensor, Tensor, Tensor> twoway_loss_cpu(const Tensor& x, const Tensor& y, const Tensor& x_hat,
                                                   const Tensor& y_hat, const Tensor& hx, const Tensor& hy,
                                                   const Tensor& hx_dec, const Tensor& hy_dec, TensorList weights,
                                                   TensorList gammas, at::ArrayRef<double> coefficients,
                                                   bool correlation, double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients);
  std::array<double, kTerms> t{};
  t[1] = squared_distance(x, x_hat);
  t[2] = squared_distance(y, y_hat);
  t[3] = squared_distance(hx, hy);
  const auto cx = second_moment(decorrelation_input_cpu(hx_dec, correlation, eps).first);
  const auto cy = second_moment(decorrelation_input_cpu(hy_dec, correlation, eps).first);
  const auto [fx, dx] = norms(cx);
  const auto [fy, dy] = norms(cy);
  t[4] = fx - dx;
  t[5] = fy - dy;
  const auto square = [](double v) { return v * v; };
  for (const auto& w : weights) t[6] += sum_over(w, square);
  for (const auto& g : gammas) {
    t[6] += sum_over(g, square);
    t[7] += sum_over(g, [](double v) { return 1.0 / (v * v); });
  }
  for (int i = 1; i < kTerms; ++i) t[0] += coefficients[kCoefficientOf[i]] * t[i];
  auto terms = at::empty({kTerms}, x.options().dtype(at::kDouble));
  std::copy(t.begin(), t.end(), terms.data_ptr<double>());
  return {terms.to(x.scalar_type()), cx, cy};
}

// Gradient of w * (||C||_F - ||diag C||_2), C = H^T H / B, with respect to h (H = h, or h's columns
// standardised): dH = (2 w / B) H G with G = C / ||C||_F - diag(C) / ||diag C||_2 (a part is 0 where
// its norm is 0), computed as (2 w / B) (H C / ||C||_F - H diag(C) / ||diag C||_2) so that no k x k
// temporary is built; then through the standardisation dh = inv_std (dH - mean(dH) - H mean(dH * H)).
// One GEMM, then one pass (three in the correlation form, column means in double) over the B x k block.
Tensor decorrelation_grad(const Tensor& h, const Tensor& c_in, double w, bool correlation, double eps) {
  const auto c = c_in.contiguous();
  const auto [fro, diag] = norms(c);
  const double scale = 2.0 * w / h.size(0);
  const auto [H, inv_std] = decorrelation_input_cpu(h, correlation, eps);
  auto dH = at::mm(H, c);
  const int64_t rows = H.size(0), cols = H.size(1);
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "twoway_loss_decorrelation_grad", [&] {
    const auto a = static_cast<scalar_t>(fro > 0 ? scale / fro : 0.0);
    const auto b = static_cast<scalar_t>(diag > 0 ? scale / diag : 0.0);
    const scalar_t* x = H.data_ptr<scalar_t>();
    const scalar_t* cd = c.data_ptr<scalar_t>();
    scalar_t* d = dH.data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) d[r * cols + j] = d[r * cols + j] * a - x[r * cols + j] * cd[j * cols + j] * b;
    if (!correlation) return;
    std::vector<double> m1(cols, 0.0), m2(cols, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        m1[j] += d[r * cols + j];
        m2[j] += static_cast<double>(d[r * cols + j]) * x[r * cols + j];
      }
    const scalar_t* inv = inv_std.data_ptr<scalar_t>();
    std::vector<scalar_t> m1_t(cols), m2_t(cols);
    for (int64_t j = 0; j < cols; ++j) {
      m1_t[j] = static_cast<scalar_t>(m1[j] / rows);
      m2_t[j] = static_cast<scalar_t>(m2[j] / rows);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = r * cols + j;
        d[i] = (d[i] - m1_t[j] - x[i] * m2_t[j]) * inv[j];
      }
  });
  return dH;
}

// d/dg of (decay / 2) g^2 + (penalty / 2) g^-2, the gamma's weight-decay and gamma-penalty terms
// scaled: one pass instead of four ops per gamma.
Tensor gamma_grad(const Tensor& g_in, double decay, double penalty) {
  const auto g = g_in.contiguous();
  auto out = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "twoway_loss_gamma_grad", [&] {
    const scalar_t* v = g.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto a = static_cast<scalar_t>(decay), b = static_cast<scalar_t>(penalty);
    for (int64_t i = 0; i < g.numel(); ++i) o[i] = v[i] * a - b / (v[i] * v[i] * v[i]);
  });
  return out;
}

using LossBackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>,
                                      std::vector<Tensor>>;

LossBackwardResult twoway_loss_backward_cpu(const Tensor& grad_terms, const Tensor& x, const Tensor& y,
                                            const Tensor& x_hat, const Tensor& y_hat, const Tensor& hx,
                                            const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                                            TensorList weights, TensorList gammas, const Tensor& cx,
                                            const Tensor& cy, at::ArrayRef<double> coefficients, bool correlation,
                                            double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients);
  TORCH_CHECK(grad_terms.dim() == 1 && grad_terms.size(0) == kTerms, "grad_terms must have shape (", kTerms,
              "), got ", grad_terms.sizes());
  const int64_t k = hx.size(1);
  TORCH_CHECK(cx.sizes() == at::IntArrayRef({k, k}) && cy.sizes() == cx.sizes(), "cx and cy must be (", k, ", ",
              k, "), got ", cx.sizes(), " and ", cy.sizes());
  // Each term's weight in the gradient: through the total and directly.
  const auto gt = grad_terms.to(at::kDouble).contiguous();
  const double* g = gt.data_ptr<double>();
  std::array<double, kTerms> w{};
  for (int i = 1; i < kTerms; ++i) w[i] = g[0] * coefficients[kCoefficientOf[i]] + g[i];
  const double B = static_cast<double>(x.size(0));
  auto grad_x_hat = (x_hat - x).mul_(2.0 * w[1] / B);
  auto grad_y_hat = (y_hat - y).mul_(2.0 * w[2] / B);
  auto grad_hx = (hx - hy).mul_(2.0 * w[3] / B);
  auto grad_hy = -grad_hx;
  auto grad_hx_dec = decorrelation_grad(hx_dec, cx, w[4], correlation, eps);
  auto grad_hy_dec = decorrelation_grad(hy_dec, cy, w[5], correlation, eps);
  std::vector<Tensor> grad_weights, grad_gammas;
  for (const auto& wt : weights) grad_weights.push_back(wt.mul(2.0 * w[6]));
  for (const auto& gm : gammas) grad_gammas.push_back(gamma_grad(gm, 2.0 * w[6], 2.0 * w[7]));
  return {grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_dec, grad_hy_dec, grad_weights, grad_gammas};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_loss", &twoway_loss_cpu);
  m.impl("twoway_loss_backward", &twoway_loss_backward_cpu);
}

}  // namespace twoway_fast
