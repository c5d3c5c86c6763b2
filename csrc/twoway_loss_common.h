// The parts of the 2-Way loss op (docs/method.md#the-loss) shared by its CPU and CUDA kernels besides the
// terms' description (loss_terms.h): input checks, the decorrelation's matrix C and the uniformity term's
// points and gradient, all through ATen (any device, no host reads).
#pragma once
#include <ATen/ATen.h>

#include <utility>

#include "checks.h"
#include "loss_terms.h"

namespace twoway_fast {

// Column mean and 1 / sqrt(var_biased + eps) of h: the correlation form's standardisation.
inline std::pair<at::Tensor, at::Tensor> column_moments(const at::Tensor& h, double eps) {
  const auto hd = h.to(at::kDouble);
  const auto mean = hd.mean(0);
  const auto inv_std = ((hd - mean).pow(2).mean(0) + eps).rsqrt();
  return {mean.to(h.scalar_type()), inv_std.to(h.scalar_type())};
}

// The matrix C's input: h itself (second moment) or its columns standardised (correlation).
inline at::Tensor decorrelation_input(const at::Tensor& h, bool correlation, double eps) {
  if (!correlation) return h;
  const auto [mean, inv_std] = column_moments(h, eps);
  return (h - mean) * inv_std;
}

// C = A^T D / B (B rows), one GEMM: the cross-view Cxy = Hx^T Hy / B.
inline at::Tensor cross_moment(const at::Tensor& A, const at::Tensor& D) {
  auto c = at::empty({A.size(1), D.size(1)}, A.options());
  return at::addmm_out(c, c, A.t(), D, /*beta=*/0, /*alpha=*/1.0 / A.size(0));
}

// C = H^T H / B, one GEMM.
inline at::Tensor second_moment(const at::Tensor& H) { return cross_moment(H, H); }

// The uniformity term's points: each row of h centred over its columns and divided by its norm, at least
// kUniformityEps (the divisors kept, (B, 1)).
struct UnitRows {
  at::Tensor u, norms;
};

inline UnitRows unit_rows(const at::Tensor& h) {
  const auto c = h - h.mean(1, /*keepdim=*/true);
  auto norms = at::linalg_vector_norm(c, 2, 1, /*keepdim=*/true).clamp_min(kUniformityEps);
  return {c / norms, std::move(norms)};
}

// E = exp(2 t (U U^T - 1)), each element exp(-t ||u_i - u_j||^2) of two unit rows: the uniformity term is
// log(S / (B (B - 1))) of S, the sum of E off its diagonal. One B x B x k GEMM.
inline at::Tensor gaps(const at::Tensor& u) {
  return at::mm(u, u.t()).sub_(1).mul_(2 * kUniformityTemperature).exp_();
}

// The gradient of w * log(S) with respect to h, from E = gaps(u) (its diagonal zeroed here) and w_over_s = w / S
// (a double, or a 0-dim device tensor): dU = 4 t (w / S) E U, through the row norms (dc = (du - u (u . du)) / n
// where the norm was not clamped, du / n where it was) and the row centring (dh = dc - its row mean).
template <typename Scale>
at::Tensor uniformity_grad(at::Tensor e, const UnitRows& points, const Scale& w_over_s) {
  e.diagonal().zero_();
  const auto du = at::mm(e, points.u) * (w_over_s * (4 * kUniformityTemperature));
  const auto radial = (points.u * du).sum(1, /*keepdim=*/true) * (points.norms > kUniformityEps);
  const auto dc = (du - points.u * radial) / points.norms;
  return dc - dc.mean(1, /*keepdim=*/true);
}

inline void check_same(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have the shape of ", like_name, " ", like.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but ", like_name, " is on ",
              like.device());
}

inline void check_loss_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_hat,
                              const at::Tensor& y_hat, const at::Tensor& hx, const at::Tensor& hy,
                              const at::Tensor& hx_dec, const at::Tensor& hy_dec, at::TensorList weights,
                              at::TensorList gammas, at::ArrayRef<double> coefficients, int64_t options) {
  check_matrix(x, "x");
  check_matrix(y, "y");
  check_matrix(hx, "hx");
  check_same(x_hat, x, "x_hat", "x");
  check_same(y_hat, y, "y_hat", "y");
  check_same(hy, hx, "hy", "hx");
  check_same(hx_dec, hx, "hx_dec", "hx");
  check_same(hy_dec, hx, "hy_dec", "hx");
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && hx.scalar_type() == x.scalar_type(),
              "x, y and hx must share a dtype, got ", x.scalar_type(), ", ", y.scalar_type(), " and ",
              hx.scalar_type());
  check_same_device(y, "y", x, "x");
  check_same_device(hx, "hx", x, "x");
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(0) == hx.size(0), "x, y and hx must have the same rows, got ",
              x.size(0), ", ", y.size(0), " and ", hx.size(0));
  TORCH_CHECK(x.size(0) >= 1, "the loss needs at least one row");
  TORCH_CHECK(coefficients.size() == kCoefficients, "coefficients must be (lx, ly, lh, lc, wd, lg, lxy, lu), got ",
              coefficients.size(), " values");
  TORCH_CHECK((options & ~option::kAll) == 0, "loss_options must combine the bits of ", option::kAll, ", got ",
              options);
  for (size_t i = 0; i < weights.size(); ++i)
    TORCH_CHECK(weights[i].scalar_type() == x.scalar_type() && weights[i].device() == x.device(), "weights[", i,
                "] must be ", x.scalar_type(), " on ", x.device(), ", got ", weights[i].scalar_type(), " on ",
                weights[i].device());
  for (size_t i = 0; i < gammas.size(); ++i)
    TORCH_CHECK(gammas[i].dim() == 1 && gammas[i].scalar_type() == x.scalar_type() &&
                    gammas[i].device() == x.device(),
                "gammas[", i, "] must be a 1-D ", x.scalar_type(), " tensor on ", x.device(), ", got ",
                gammas[i].scalar_type(), " of shape ", gammas[i].sizes(), " on ", gammas[i].device());
}

}  // namespace twoway_fast
