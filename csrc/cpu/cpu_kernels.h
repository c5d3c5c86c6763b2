// The CPU kernels the training-step ops (csrc/cpu/twoway_step.cpp) run in turn, called from C++
// without the dispatcher: the network op and its backward (arguments and results as their schemas in
// csrc/twoway_fast.cpp) and the loss with its gradients.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <tuple>
#include <vector>

#include "twoway_loss_common.h"  // kTerms

namespace twoway_fast {

using NetForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;
using NetBackwardResult = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                                     std::vector<at::Tensor>, std::vector<at::Tensor>>;
// Called with (k, dW_k) on the thread that computed weights[k]'s gradient, right after its GEMM,
// while dW_k is in that core's cache; the op has no further use of weights[k] by then.
using WeightGradHook = std::function<void(int64_t, at::Tensor&)>;

// keep_out: where given, receives the dropout masks' multipliers (one per hidden position, or
// undefined), for a backward in the same call to use instead of drawing them again.
NetForwardResult twoway_net_cpu(const at::Tensor& x, const at::Tensor& y, at::TensorList weights,
                                at::TensorList bias, at::TensorList gamma, at::TensorList beta,
                                const at::Tensor& rng_states, at::ArrayRef<double> p, int64_t repr, double leak,
                                double eps, bool act_first, std::vector<at::Tensor>* keep_out = nullptr);

NetBackwardResult twoway_net_backward_cpu(
    const c10::optional<at::Tensor>& grad_x_hat, const c10::optional<at::Tensor>& grad_y_hat,
    const c10::optional<at::Tensor>& grad_hx, const c10::optional<at::Tensor>& grad_hy,
    const c10::optional<at::Tensor>& grad_hx_pre, const c10::optional<at::Tensor>& grad_hy_pre,
    const at::Tensor& x, const at::Tensor& y, at::TensorList weights, at::TensorList gamma, at::TensorList beta,
    const at::Tensor& rng_states, at::ArrayRef<double> p, int64_t repr, double leak, bool act_first,
    at::TensorList z, at::TensorList mean, at::TensorList std, bool input_grads,
    const WeightGradHook& on_weight_grad = nullptr, const std::vector<at::Tensor>* keep = nullptr);

// The 2-Way loss and the gradients of its total (grad_terms = (1, 0, ..., 0)) in one region, each
// channel's inputs read once: the training-step ops' loss. terms as twoway_loss's in double, without the
// weights' squares (terms[6] holds the gammas'; the caller adds the weights') and without the total
// (terms[0] is 0; loss_terms_tensor sums it); the gradients as twoway_loss_backward's.
struct LossAndGrads {
  std::array<double, kTerms> terms;
  at::Tensor grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_dec, grad_hy_dec;
  std::vector<at::Tensor> grad_gammas;
};
LossAndGrads twoway_loss_and_grads_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_hat,
                                       const at::Tensor& y_hat, const at::Tensor& hx, const at::Tensor& hy,
                                       const at::Tensor& hx_dec, const at::Tensor& hy_dec, at::TensorList gammas,
                                       at::ArrayRef<double> coefficients, bool midway_log, bool correlation,
                                       double eps);

// The terms tensor the loss op returns: the total summed from terms[1..], in x's dtype.
at::Tensor loss_terms_tensor(std::array<double, kTerms> terms, at::ArrayRef<double> coefficients,
                             const at::Tensor& x);

}  // namespace twoway_fast
