// The CPU kernels the training-step ops (csrc/cpu/twoway_step.cpp) run in turn, called from C++
// without the dispatcher: the network op and its backward (arguments and results as their schemas in
// csrc/twoway_fast.cpp) and the loss pass.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <tuple>
#include <vector>

#include "loss_terms.h"  // kSums
#include "op_results.h"
#include "tied_gemm.h"   // Products

namespace twoway_fast {

// Called with (k, dW_k) on the thread that computed weights[k]'s gradient, right after its GEMM,
// while dW_k is in that core's cache; the op has no further use of weights[k] by then.
using WeightGradHook = std::function<void(int64_t, at::Tensor&)>;

// What a forward hands the backward of the same call (the step ops), so that the backward neither draws
// the dropout masks again nor casts the weights again: the masks' multipliers (one per hidden position,
// or undefined) and the weights as the GEMMs take them (contiguous, in the products' dtype).
struct NetCarry {
  std::vector<at::Tensor> keep, gemm_weights;
};

// carry_out: where given, receives the NetCarry. products: the dtype the GEMMs multiply in
// (csrc/tied_gemm.h), both directions.
NetResult twoway_net_cpu(const at::Tensor& x, const at::Tensor& y, at::TensorList weights,
                                at::TensorList bias, at::TensorList gamma, at::TensorList beta,
                                const at::Tensor& rng_states, at::ArrayRef<double> p, int64_t repr,
                                at::ArrayRef<double> leak, double eps, bool act_first,
                                NetCarry* carry_out = nullptr, Products products = {});

// carry: the forward's, where the same call ran it.
NetBackwardResult twoway_net_backward_cpu(
    const c10::optional<at::Tensor>& grad_x_hat, const c10::optional<at::Tensor>& grad_y_hat,
    const c10::optional<at::Tensor>& grad_hx, const c10::optional<at::Tensor>& grad_hy,
    const c10::optional<at::Tensor>& grad_hx_pre, const c10::optional<at::Tensor>& grad_hy_pre,
    const at::Tensor& x, const at::Tensor& y, at::TensorList weights, at::TensorList gamma, at::TensorList beta,
    const at::Tensor& rng_states, at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, bool act_first,
    at::TensorList z, at::TensorList mean, at::TensorList std, bool input_grads,
    const WeightGradHook& on_weight_grad = nullptr, const NetCarry* carry = nullptr, Products products = {});

// The inputs of the 2-Way loss (the loss op's, csrc/twoway_fast.cpp), hx_dec/hy_dec the decorrelation's.
struct LossInputs {
  const at::Tensor &x, &y, &x_hat, &y_hat, &hx, &hy, &hx_dec, &hy_dec;
  at::TensorList weights, gammas;
};

// What a pass of the 2-Way loss gives: the sums of its terms (loss_terms.h) and the decorrelation
// matrices, and, when asked, the gradients with respect to every input but x and y (x's and y's are
// the negation of x_hat's and y_hat's).
struct LossPass {
  std::array<double, kSums> sums{};
  double log_midway = 0.0;  // the log mid-way term, summed from its columns
  at::Tensor cx, cy;
  at::Tensor grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_dec, grad_hy_dec;
  std::vector<at::Tensor> grad_weights, grad_gammas;
  // The weight-decay term's gradient with respect to a weight W is weight_grad_factor * W: for the
  // training-step ops, which pass no weights and complete the term with add_weight_squares from the
  // pass that updates them (it reads them anyway).
  double weight_grad_factor = 0.0;
  void add_weight_squares(double squares) { sums[sum::kWeightDecay] += squares; }
  // terms as the loss op returns them, in x's dtype.
  at::Tensor terms(at::ArrayRef<double> coefficients, int64_t options, const at::Tensor& x) const;
};

// The one CPU pass of the 2-Way loss that the loss op, its backward and the training-step ops run, each
// channel's inputs read once. With `sums`, the terms' sums and C; with grad_terms (kTerms, in double), the
// gradients of sum_i grad_terms[i] * terms[i], from C given (the backward op's cx, cy: c[0], c[1]) or
// computed. loss_options as the ops take them (loss_terms.h).
LossPass twoway_loss_pass(const LossInputs& in, at::ArrayRef<double> coefficients, int64_t options, double eps,
                          bool sums, const double* grad_terms, const at::Tensor* c = nullptr);

}  // namespace twoway_fast
