// The CUDA loss's terms (loss_terms.h describes them and their value from the sums): which tensors feed
// which sum (loss_forward_table, run by tests/cuda_emulation too) and, under nvcc, the per-column sums
// a term takes (term_columns) and every term's gradient (loss_gradients), the same as the CPU pass's
// (csrc/cpu/twoway_loss.cpp), in ATen ops on the device with nothing read on the host.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "cuda/loss_sums.cuh"
#include "loss_terms.h"
#include "op_results.h"
#include "twoway_loss_common.h"  // decorrelation_input, column_moments, second_moment, cross_moment, unit_rows, gaps

namespace twoway_fast {

// The matrices the terms are summed from, in the accumulation type (float for half and bfloat16),
// contiguous: the decorrelation's C = H^T H / B of each channel (the forward op's results, which its
// backward takes), the cross-view Cxy = Hx^T Hy / B, and the uniformity term's E = gaps(U) of each channel.
struct LossMatrices {
  at::Tensor cx, cy, cxy, ex, ey;
};

inline LossMatrices loss_matrices(const at::Tensor& hx_dec, const at::Tensor& hy_dec, bool correlation, double eps) {
  const auto acc = stats_dtype(hx_dec.scalar_type());
  const auto hx = hx_dec.to(acc).contiguous(), hy = hy_dec.to(acc).contiguous();
  const auto Hx = decorrelation_input(hx, correlation, eps), Hy = decorrelation_input(hy, correlation, eps);
  return {second_moment(Hx), second_moment(Hy), cross_moment(Hx, Hy), gaps(unit_rows(hx).u),
          gaps(unit_rows(hy).u)};
}

// The forward's table: every sum of the terms (sums[kMidway] stays 0 in the log form, which takes column
// sums). All tensors contiguous; the matrices from loss_matrices, the others in x's dtype.
inline SegmentTable loss_forward_table(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_hat,
                                       const at::Tensor& y_hat, const at::Tensor& hx, const at::Tensor& hy,
                                       const LossMatrices& m, const std::vector<at::Tensor>& weights,
                                       const std::vector<at::Tensor>& gammas, int64_t options) {
  SegmentTable table;
  table.add(x, x_hat, x.numel(), 1, kSquaredDifference, sum::kReconX, false);
  table.add(y, y_hat, y.numel(), 1, kSquaredDifference, sum::kReconY, false);
  if (!has(options, option::kMidwayLog)) table.add(hx, hy, hx.numel(), 1, kSquaredDifference, sum::kMidway, false);
  table.add_norms(m.cx, sum::kFroX, sum::kDiagX);
  table.add_norms(m.cy, sum::kFroY, sum::kDiagY);
  table.add_norms(m.cxy, sum::kFroXy, sum::kDiagXy);
  table.add_sums(m.ex, sum::kGapsX, sum::kGapsDiagX);
  table.add_sums(m.ey, sum::kGapsY, sum::kGapsDiagY);
  for (const auto& t : weights) table.add_all(t, kSquare, sum::kWeightDecay);
  for (const auto& t : gammas) {
    table.add_all(t, kSquare, sum::kWeightDecay);
    table.add_all(t, kInverseSquare, sum::kGammaPenalty);
  }
  return table;
}

#if defined(__CUDACC__)
// The per-column sums the finishing kernel takes (the log mid-way term's, of (hx - hy)^2), or undefined.
// hx, hy contiguous.
inline at::Tensor term_columns(const at::Tensor& hx, const at::Tensor& hy, int64_t options) {
  return has(options, option::kMidwayLog) ? midway_column_sums(hx, hy) : at::Tensor();
}

// csrc/cpu/twoway_loss.cpp's add_norm_grad: the gradient of w * (||C||_F - ||diag C||_2), C = A^T D / B,
// with respect to A, from D, c_t = C^T, C's norms as 0-dim device tensors and scale = w / B (2 w / B for
// D = A); a part whose norm is 0 contributes 0, chosen on the device.
inline at::Tensor norm_grad(const at::Tensor& D, const at::Tensor& c_t, const at::Tensor& fro, const at::Tensor& diag,
                            const at::Tensor& scale) {
  const auto zero = at::zeros_like(fro);
  const auto dA = at::mm(D, c_t) * at::where(fro > 0, scale / fro, zero);
  return dA - D * c_t.diagonal() * at::where(diag > 0, scale / diag, zero);
}

// csrc/cpu/twoway_loss.cpp's standardisation_grad: dH (with respect to H = decorrelation_input(h)) carried
// to h.
inline at::Tensor standardisation_grad(const at::Tensor& dH, const at::Tensor& H, const at::Tensor& h, bool correlation,
                                       double eps) {
  if (!correlation) return dH;
  const auto inv_std = column_moments(h, eps).second;
  return (dH - dH.mean(0) - H * (dH * H).mean(0)) * inv_std;
}

// The gradients of sum_i grad_terms[i] * terms[i] (the backward op's results) from C in the accumulation
// type, contiguous.
inline LossBackwardResult loss_gradients(const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y,
                                         const at::Tensor& x_hat, const at::Tensor& y_hat, const at::Tensor& hx,
                                         const at::Tensor& hy, const at::Tensor& hx_dec, const at::Tensor& hy_dec,
                                         at::TensorList weights, at::TensorList gammas, const at::Tensor& cx,
                                         const at::Tensor& cy, at::ArrayRef<double> coefficients, int64_t options,
                                         double eps) {
  using at::Tensor;
  const auto acc = cx.scalar_type();
  const bool correlation = has(options, option::kCorrelation);
  SegmentTable table;  // the norms of C and the sums of E
  table.add_norms(cx, sum::kFroX, sum::kDiagX);
  table.add_norms(cy, sum::kFroY, sum::kDiagY);
  const auto hx_acc = hx_dec.to(acc).contiguous(), hy_acc = hy_dec.to(acc).contiguous();
  const auto Hx = decorrelation_input(hx_acc, correlation, eps), Hy = decorrelation_input(hy_acc, correlation, eps);
  const auto cxy = cross_moment(Hx, Hy);  // not saved by the forward: one small GEMM
  table.add_norms(cxy, sum::kFroXy, sum::kDiagXy);
  const UnitRows points[2] = {unit_rows(hx_acc), unit_rows(hy_acc)};  // nor are the uniformity's E
  Tensor e[2] = {gaps(points[0].u), gaps(points[1].u)};
  table.add_sums(e[0], sum::kGapsX, sum::kGapsDiagX);
  table.add_sums(e[1], sum::kGapsY, sum::kGapsDiagY);
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  reduce(table, sums, Tensor(), static_cast<double>(x.size(0)), LossCoefficients(coefficients), options,
         x.scalar_type());
  const auto norms = sums.sqrt();
  // Each term's weight in the gradient (0-dim, on the device).
  const auto g = grad_terms.to(at::kDouble);
  std::array<Tensor, kTerms> w;
  for (int i = 1; i < kTerms; ++i) w[i] = term_weight(g[term::kTotal], g[i], coefficients.data(), i);
  const double B = static_cast<double>(x.size(0));
  auto grad_x_hat = (x_hat - x) * (w[term::kReconX] * (2.0 / B));
  auto grad_y_hat = (y_hat - y) * (w[term::kReconY] * (2.0 / B));
  auto midway_scale = w[term::kMidway] * (2.0 / B);  // 0-dim; in the log form per column, divided by d_i + eps
  if (has(options, option::kMidwayLog)) {
    const auto d = midway_column_sums(hx.contiguous(), hy.contiguous()) / B;
    midway_scale = (midway_scale / (d + kMidwayLogEps)).to(hx.scalar_type());
  }
  auto grad_hx = (hx - hy) * midway_scale;
  auto grad_hy = -grad_hx;
  // The decorrelation's and the cross-view term's gradients with respect to H, then through H to h.
  const auto cross_scale = w[term::kDecorrXy] * (1.0 / B);
  auto dHx = norm_grad(Hx, cx, norms[sum::kFroX], norms[sum::kDiagX], w[term::kDecorrX] * (2.0 / B));
  dHx = dHx + norm_grad(Hy, cxy.t(), norms[sum::kFroXy], norms[sum::kDiagXy], cross_scale);
  auto dHy = norm_grad(Hy, cy, norms[sum::kFroY], norms[sum::kDiagY], w[term::kDecorrY] * (2.0 / B));
  dHy = dHy + norm_grad(Hx, cxy, norms[sum::kFroXy], norms[sum::kDiagXy], cross_scale);
  Tensor grad_dec[2] = {standardisation_grad(dHx, Hx, hx_acc, correlation, eps),
                        standardisation_grad(dHy, Hy, hy_acc, correlation, eps)};
  for (int ch = 0; ch < 2; ++ch) {  // the uniformity term's, w / S with S = sum E - its diagonal (0: one row)
    const bool is_x = ch == 0;
    const auto pairs = sums[is_x ? sum::kGapsX : sum::kGapsY] - sums[is_x ? sum::kGapsDiagX : sum::kGapsDiagY];
    const auto& weight = w[is_x ? term::kUniformX : term::kUniformY];
    grad_dec[ch] = grad_dec[ch] + uniformity_grad(e[ch], points[ch], at::where(pairs > 0, weight / pairs, 0.0));
  }
  std::vector<Tensor> grad_weights, grad_gammas;
  for (const auto& wt : weights) grad_weights.push_back(wt * (w[term::kWeightDecay] * 2.0));
  for (const auto& gm : gammas)
    grad_gammas.push_back(gm * (w[term::kWeightDecay] * 2.0) - gm.pow(-3) * (w[term::kGammaPenalty] * 2.0));
  return {grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_dec[0].to(hx.scalar_type()),
          grad_dec[1].to(hx.scalar_type()), grad_weights, grad_gammas};
}
#endif

}  // namespace twoway_fast
