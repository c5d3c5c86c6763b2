// CPU kernel of the 2-Way loss (docs/method.md#the-loss): one pass (twoway_loss_pass) that the loss op, its
// backward and the training-step ops run, computing each term's sums (loss_terms.h) and gradient: one pass
// per distance, each matrix a term takes norms of (C of each view, the cross-view Cxy) one small GEMM, the
// uniformity term's pairs of rows (twoway_loss_common.h) one B x B GEMM a view, sums in double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/cpu_builds.h"  // run_fastest
#include "cpu/cpu_kernels.h"
#include "cpu/parallel_chunks.h"  // kParallelMinElements, grain_for
#include "cpu/side_by_side.h"
#include "loss_terms.h"
#include "twoway_loss_common.h"  // check_loss_inputs, second_moment, cross_moment, unit_rows, gaps, uniformity_grad

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

constexpr int kSumLanes = 16;           // partial sums per reduction (see lane_sum)
constexpr int64_t kSumGrain = 1 << 17;  // elements below which a reduction runs on the calling thread

// sum over i in [i0, i1) of term(i), in double, in kSumLanes partial sums (element i in lane
// (i - i0) % kSumLanes) added up in lane order: several accumulators, since one is bound by the add
// latency, and one summation order, so the baseline and the AVX-512 build give the same bits.
template <typename F>
double lane_sum(int64_t i0, int64_t i1, const F& term) {
  double total = 0.0;
  run_fastest([term, i0, i1, &total] {
    double lanes[kSumLanes] = {};
    int64_t i = i0;
    for (; i + kSumLanes <= i1; i += kSumLanes)
#pragma omp simd  // the lanes are independent: vectorised without reordering any sum
      for (int l = 0; l < kSumLanes; ++l) lanes[l] += term(i + l);
    for (int l = 0; i + l < i1; ++l) lanes[l] += term(i + l);
    for (int l = 0; l < kSumLanes; ++l) total += lanes[l];
  });
  return total;
}

// sum over i in [0, n) of term(i), in double; in parallel from kSumGrain elements.
template <typename F>
double sum_of(int64_t n, const F& term) {
  return at::parallel_reduce(0, n, kSumGrain, 0.0, [term](int64_t i0, int64_t i1, double acc) {
    return acc + lane_sum(i0, i1, term);
  }, std::plus<double>());
}

// sum of f(t_i) over every element of every tensor (one dtype), in double: one parallel reduction
// over the tensors end to end, no temporaries (the weight decay runs over every weight).
template <typename F>
double sum_over(TensorList tensors_in, F f) {
  if (tensors_in.empty()) return 0.0;
  std::vector<Tensor> tensors;
  std::vector<int64_t> starts{0};  // tensor j holds the elements [starts[j], starts[j + 1]) of the whole
  for (const auto& t : tensors_in) {
    tensors.push_back(t.contiguous());
    starts.push_back(starts.back() + t.numel());
  }
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES(tensors[0].scalar_type(), "twoway_loss_sum", [&] {
    std::vector<const scalar_t*> data;
    for (const auto& t : tensors) data.push_back(t.data_ptr<scalar_t>());
    sum = at::parallel_reduce(0, starts.back(), kSumGrain, 0.0, [&](int64_t i0, int64_t i1, double acc) {
      for (size_t j = 0; j < data.size(); ++j) {
        const int64_t lo = std::max(i0, starts[j]), hi = std::min(i1, starts[j + 1]);
        if (lo >= hi) continue;
        // Copies, not references: through a by-reference capture the vectoriser cannot see them invariant.
        const scalar_t* v = data[j];
        const int64_t start = starts[j];
        acc += lane_sum(lo, hi, [v, start, f](int64_t i) { return f(static_cast<double>(v[i - start])); });
      }
      return acc;
    }, std::plus<double>());
  });
  return sum;
}

// (||C||_F^2, ||diag C||_2^2) in double, one pass over C (k x k).
std::pair<double, double> square_norms(const Tensor& c) {
  const int64_t k = c.size(0);
  double all = 0.0, diag = 0.0;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "twoway_loss_norms", [&] {
    const scalar_t* v = c.data_ptr<scalar_t>();
    all = sum_of(k * k, [v](int64_t i) { return static_cast<double>(v[i]) * v[i]; });
    for (int64_t i = 0; i < k; ++i) diag += static_cast<double>(v[i * k + i]) * v[i * k + i];
  });
  return {all, diag};
}

// The squared distance of a and b (one shape) in one pass, each element read once: with `sum`, the sum
// of (a - b)^2 over every element into *sum, in double; with `grad`, its gradient's (a - b) * scale
// into *grad, rounded as (a - b).mul_(scale) rounds it (the scale in a's dtype), and with `negation`
// that negated (b's).
void squared_distance(const Tensor& a_in, const Tensor& b_in, double* sum, double scale, Tensor* grad,
                      Tensor* negation) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  if (grad != nullptr) *grad = at::empty_like(a);
  if (negation != nullptr) *negation = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "twoway_loss_distance", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = grad != nullptr ? grad->data_ptr<scalar_t>() : nullptr;
    scalar_t* pn = negation != nullptr ? negation->data_ptr<scalar_t>() : nullptr;
    const auto s = static_cast<scalar_t>(scale);
    if (sum == nullptr) {  // the gradient alone: one loop writes both
      at::parallel_for(0, a.numel(), kParallelMinElements, [=](int64_t i0, int64_t i1) { run_fastest([=] {
        for (int64_t i = i0; i < i1; ++i) po[i] = (pa[i] - pb[i]) * s;
        if (pn != nullptr)
          for (int64_t i = i0; i < i1; ++i) pn[i] = -po[i];
      }); });
      return;
    }
    if (po == nullptr) {
      *sum = sum_of(a.numel(), [pa, pb](int64_t i) {
        const double d = static_cast<double>(pa[i]) - pb[i];
        return d * d;
      });
      return;
    }
    *sum = sum_of(a.numel(), [pa, pb, po, s](int64_t i) {
      po[i] = (pa[i] - pb[i]) * s;
      const double d = static_cast<double>(pa[i]) - pb[i];
      return d * d;
    });
    if (pn != nullptr)
      at::parallel_for(0, a.numel(), kParallelMinElements, [=](int64_t i0, int64_t i1) { run_fastest([=] {
        for (int64_t i = i0; i < i1; ++i) pn[i] = -po[i];
      }); });
  });
}

// The log mid-way term's d_i = (1/B) sum_b (a[b,i] - b[b,i])^2 of each column i, in double: one pass
// over the rows, each column summed in row order (one order, so both builds give the same bits).
std::vector<double> column_distances(const Tensor& a_in, const Tensor& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t rows = a.size(0), cols = a.size(1);
  std::vector<double> d(cols, 0.0);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "twoway_loss_column_distances", [&] {
    const scalar_t* __restrict pa = a.data_ptr<scalar_t>();
    const scalar_t* __restrict pb = b.data_ptr<scalar_t>();
    double* __restrict sums = d.data();
    run_fastest([=] {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          const double e = static_cast<double>(pa[r * cols + j]) - pb[r * cols + j];
          sums[j] += e * e;
        }
    });
  });
  for (double& v : d) v /= rows;
  return d;
}

// The log mid-way term from column_distances' d: sum_i log(d_i + kMidwayLogEps).
double log_midway(const std::vector<double>& d) {
  double sum = 0.0;
  for (const double v : d) sum += std::log(v + kMidwayLogEps);
  return sum;
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

// Gradient of w * (||C||_F - ||diag C||_2), C = A^T D / B (the decorrelation's H^T H, or the cross-view
// Hx^T Hy), with respect to A: (w / B) D G^T with G = C / ||C||_F - diag(C) / ||diag C||_2 (a part is 0
// where its norm is 0), computed as (w / B) (D C^T / ||C||_F - D diag(C) / ||diag C||_2) so that no k x k
// temporary is built (c_t is C^T; for D = A, where C is symmetric, both sides' share: scale 2 w / B). One
// GEMM and one pass over the B x k block; added to *dA when it is defined.
void add_norm_grad(Tensor* dA, const Tensor& D, const Tensor& c_t, double fro, double diag, double scale) {
  auto g = at::mm(D, c_t);
  const int64_t rows = D.size(0), cols = D.size(1);
  AT_DISPATCH_FLOATING_TYPES(D.scalar_type(), "twoway_loss_norm_grad", [&] {
    const auto a = static_cast<scalar_t>(fro > 0 ? scale / fro : 0.0);
    const auto b = static_cast<scalar_t>(diag > 0 ? scale / diag : 0.0);
    const scalar_t* x = D.data_ptr<scalar_t>();
    const scalar_t* cd = c_t.data_ptr<scalar_t>();
    scalar_t* d = g.data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) d[r * cols + j] = d[r * cols + j] * a - x[r * cols + j] * cd[j * cols + j] * b;
  });
  if (dA->defined())
    dA->add_(g);
  else
    *dA = std::move(g);
}

// The gradient dH with respect to H (decorrelation_input_cpu's) carried to h: in the correlation form
// through the standardisation, dh = inv_std (dH - mean(dH) - H mean(dH * H)) with the column means in
// double (three passes over the B x k block), in place; dH itself otherwise.
Tensor standardisation_grad(Tensor dH, const Tensor& H, const Tensor& inv_std, bool correlation) {
  if (!correlation) return dH;
  const int64_t rows = H.size(0), cols = H.size(1);
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "twoway_loss_standardisation_grad", [&] {
    const scalar_t* x = H.data_ptr<scalar_t>();
    scalar_t* d = dH.data_ptr<scalar_t>();
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

// The log mid-way term's gradient with respect to a, times w, and its negation (b's): in column i,
// (a - b) * 2 w / (B (d_i + kMidwayLogEps)), d from column_distances(a, b), each column's factor
// rounded to a's dtype as scaled_difference rounds its scale.
std::pair<Tensor, Tensor> log_midway_grad(const Tensor& a_in, const Tensor& b_in, const std::vector<double>& d,
                                          double w) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t rows = a.size(0), cols = a.size(1);
  auto out = at::empty_like(a), negation = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "twoway_loss_log_midway_grad", [&] {
    std::vector<scalar_t> factors(cols);
    for (int64_t j = 0; j < cols; ++j)
      factors[j] = static_cast<scalar_t>(2.0 * w / (static_cast<double>(rows) * (d[j] + kMidwayLogEps)));
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const scalar_t* f = factors.data();
    scalar_t* po = out.data_ptr<scalar_t>();
    scalar_t* pn = negation.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) { run_fastest([=] {
      for (int64_t i = r0 * cols; i < r1 * cols; i += cols)
        for (int64_t j = 0; j < cols; ++j) {
          const scalar_t g = (pa[i + j] - pb[i + j]) * f[j];
          po[i + j] = g;
          pn[i + j] = -g;
        }
    }); });
  });
  return {out, negation};
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

}  // namespace

Tensor LossPass::terms(at::ArrayRef<double> coefficients, int64_t options, const Tensor& x) const {
  std::array<double, kTerms> t{};
  terms_from_sums(sums.data(), static_cast<double>(x.size(0)), options, log_midway, coefficients.data(), t.data());
  auto out = at::empty({kTerms}, x.options().dtype(at::kDouble));
  std::copy(t.begin(), t.end(), out.data_ptr<double>());
  return out.to(x.scalar_type());
}

LossPass twoway_loss_pass(const LossInputs& in, at::ArrayRef<double> coefficients, int64_t options, double eps,
                          bool sums, const double* grad_terms, const Tensor* c) {
  LossPass r;
  auto& s = r.sums;
  const bool grads = grad_terms != nullptr, correlation = has(options, option::kCorrelation);
  std::array<double, kTerms> w{};  // each term's weight in the gradient
  if (grads)
    for (int i = 1; i < kTerms; ++i) w[i] = term_weight(grad_terms[0], grad_terms[i], coefficients.data(), i);
  const double B = static_cast<double>(in.x.size(0));
  // The cross-view term needs both channels' H: its gradient joins theirs before the standardisation's.
  const bool cross_grad = grads && w[term::kDecorrXy] != 0.0;
  std::array<Tensor, 2> H, inv_std, dH, uniform_grad;
  const auto carry_to_h = [&](int ch) {
    (ch == 0 ? r.grad_hx_dec : r.grad_hy_dec) = standardisation_grad(dH[ch], H[ch], inv_std[ch], correlation);
  };
  side_by_side([&](int ch) {  // a channel each, the midway pair with Y
    const bool is_x = ch == 0;
    squared_distance(is_x ? in.x_hat : in.y_hat, is_x ? in.x : in.y,
                     sums ? &s[is_x ? sum::kReconX : sum::kReconY] : nullptr,
                     2.0 * w[is_x ? term::kReconX : term::kReconY] / B,
                     grads ? &(is_x ? r.grad_x_hat : r.grad_y_hat) : nullptr, nullptr);
    if (!is_x && has(options, option::kMidwayLog)) {
      const auto d = column_distances(in.hx, in.hy);
      if (sums) r.log_midway = log_midway(d);
      if (grads) std::tie(r.grad_hx, r.grad_hy) = log_midway_grad(in.hx, in.hy, d, w[term::kMidway]);
    } else if (!is_x) {
      squared_distance(in.hx, in.hy, sums ? &s[sum::kMidway] : nullptr, 2.0 * w[term::kMidway] / B,
                       grads ? &r.grad_hx : nullptr, grads ? &r.grad_hy : nullptr);
    }
    const auto points = unit_rows(is_x ? in.hx_dec : in.hy_dec);
    auto e = gaps(points.u);
    const double gaps_all = e.sum(at::kDouble).item<double>();
    const double gaps_diag = e.diagonal().sum(at::kDouble).item<double>();
    if (sums) s[is_x ? sum::kGapsX : sum::kGapsY] = gaps_all, s[is_x ? sum::kGapsDiagX : sum::kGapsDiagY] = gaps_diag;
    const double w_uniform = w[is_x ? term::kUniformX : term::kUniformY];
    if (grads && w_uniform != 0.0 && B >= 2)
      uniform_grad[ch] = uniformity_grad(std::move(e), points, w_uniform / (gaps_all - gaps_diag));
    std::tie(H[ch], inv_std[ch]) = decorrelation_input_cpu(is_x ? in.hx_dec : in.hy_dec, correlation, eps);
    Tensor& cm = is_x ? r.cx : r.cy;
    cm = c != nullptr ? c[ch].contiguous() : second_moment(H[ch]);
    const auto [fro, diag] = square_norms(cm);
    if (sums) s[is_x ? sum::kFroX : sum::kFroY] = fro, s[is_x ? sum::kDiagX : sum::kDiagY] = diag;
    if (!grads) return;
    add_norm_grad(&dH[ch], H[ch], cm, std::sqrt(fro), std::sqrt(diag),
                  2.0 * w[is_x ? term::kDecorrX : term::kDecorrY] / B);
    if (!cross_grad) carry_to_h(ch);
  });
  if (sums || cross_grad) {  // the cross-view term: Cxy = Hx^T Hy / B
    const auto cxy = cross_moment(H[0], H[1]);
    const auto [fro, diag] = square_norms(cxy);
    if (sums) s[sum::kFroXy] = fro, s[sum::kDiagXy] = diag;
    if (cross_grad) {
      const auto cxy_t = cxy.t().contiguous();
      side_by_side([&](int ch) {
        add_norm_grad(&dH[ch], H[1 - ch], ch == 0 ? cxy_t : cxy, std::sqrt(fro), std::sqrt(diag),
                      w[term::kDecorrXy] / B);
        carry_to_h(ch);
      });
    }
  }
  for (int ch = 0; ch < 2; ++ch)
    if (uniform_grad[ch].defined()) (ch == 0 ? r.grad_hx_dec : r.grad_hy_dec).add_(uniform_grad[ch]);
  if (sums) {
    const auto square = [](double v) { return v * v; };
    s[sum::kWeightDecay] = sum_over(in.weights, square) + sum_over(in.gammas, square);
    s[sum::kGammaPenalty] = sum_over(in.gammas, [](double v) { return 1.0 / (v * v); });
  }
  r.weight_grad_factor = 2.0 * w[term::kWeightDecay];  // d/dW of wd ||W||^2
  if (grads) {
    for (const auto& wt : in.weights) r.grad_weights.push_back(wt.mul(r.weight_grad_factor));
    for (const auto& gm : in.gammas)
      r.grad_gammas.push_back(gamma_grad(gm, r.weight_grad_factor, 2.0 * w[term::kGammaPenalty]));
  }
  return r;
}

namespace {

LossResult twoway_loss_cpu(const Tensor& x, const Tensor& y, const Tensor& x_hat, const Tensor& y_hat,
                           const Tensor& hx, const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                           TensorList weights, TensorList gammas, at::ArrayRef<double> coefficients,
                           int64_t options, double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients, options);
  const auto r = twoway_loss_pass({x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas}, coefficients,
                                  options, eps, /*sums=*/true, nullptr);
  return {r.terms(coefficients, options, x), r.cx, r.cy};
}

LossBackwardResult twoway_loss_backward_cpu(const Tensor& grad_terms, const Tensor& x, const Tensor& y,
                                            const Tensor& x_hat, const Tensor& y_hat, const Tensor& hx,
                                            const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                                            TensorList weights, TensorList gammas, const Tensor& cx,
                                            const Tensor& cy, at::ArrayRef<double> coefficients, int64_t options,
                                            double eps) {
  check_loss_inputs(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients, options);
  TORCH_CHECK(grad_terms.dim() == 1 && grad_terms.size(0) == kTerms, "grad_terms must have shape (", kTerms,
              "), got ", grad_terms.sizes());
  const int64_t k = hx.size(1);
  TORCH_CHECK(cx.sizes() == at::IntArrayRef({k, k}) && cy.sizes() == cx.sizes(), "cx and cy must be (", k, ", ",
              k, "), got ", cx.sizes(), " and ", cy.sizes());
  check_same_device(grad_terms, "grad_terms", x, "x");
  check_same_device(cx, "cx", x, "x");
  check_same_device(cy, "cy", x, "x");
  const auto g = grad_terms.to(at::kDouble).contiguous();
  const Tensor c[2] = {cx, cy};
  auto r = twoway_loss_pass({x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas}, coefficients, options,
                            eps, /*sums=*/false, g.data_ptr<double>(), c);
  return {r.grad_x_hat, r.grad_y_hat, r.grad_hx, r.grad_hy, r.grad_hx_dec, r.grad_hy_dec,
          std::move(r.grad_weights), std::move(r.grad_gammas)};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_loss", &twoway_loss_cpu);
  m.impl("twoway_loss_backward", &twoway_loss_backward_cpu);
}

}  // namespace twoway_fast
