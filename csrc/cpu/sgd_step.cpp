// CPU kernel of the training-step op: one SGD step of a 2-Way Net (twoway_fast.fused_step.DirectStep)
// in one call. The network op, the loss op, the loss's backward and the network's backward run as in
// the autograd step; then each parameter takes torch.optim.SGD's update (weight decay, momentum,
// dampening, Nesterov, maximize) in the same pass that completes its gradient. A weight is updated
// right after its gradient's GEMM, on the thread that ran it, while the gradient is in that core's
// cache: the update does not read the gradient back from memory, nor the step go back to Python.
// The first step, which creates the momentum buffers, is the optimiser's own (DirectStep).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/fused_block.h"  // run_fastest

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

struct Sgd {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// grad += decay * param (the loss's weight decay: rounded product, then the sum, as autograd adds the
// loss's gradient to the network's), then torch.optim.SGD's update of param and its momentum buffer
// buf (null without momentum).
template <typename T>
void sgd_update(T* param, T* grad, T* buf, int64_t n, T decay, const Sgd& o) {
  with_flags(decay != T(0), o.weight_decay != 0.0, buf != nullptr, [&](auto has_decay, auto has_wd, auto has_buf) {
    at::parallel_for(0, n, 1 << 15, [&](int64_t i0, int64_t i1) {
      run_fastest([&] {
        // Locals, not the captured references: the stores below could alias those, and GCC would reload
        // them every element and keep the loop scalar.
        T* __restrict p_ = param;
        T* __restrict g_ = grad;
        T* __restrict b_ = buf;
        const T dec = decay, lr = static_cast<T>(o.lr), mom = static_cast<T>(o.momentum);
        const T wd = static_cast<T>(o.weight_decay), undamped = static_cast<T>(1.0 - o.dampening);
        const T sign = o.maximize ? T(-1) : T(1);
        const bool nesterov = o.nesterov;
        for (int64_t i = i0; i < i1; ++i) {
          const T p = p_[i];
          T g = g_[i];
          if constexpr (has_decay) {
            const T d = dec * p;
            g = g + d;
            g_[i] = g;
          }
          T step = sign * g;
          if constexpr (has_wd) step = step + wd * p;
          if constexpr (has_buf) {
            const T b = b_[i] * mom + undamped * step;
            b_[i] = b;
            step = nesterov ? step + mom * b : b;
          }
          p_[i] = p - lr * step;
        }
      });
    });
  });
}

void update(const Tensor& param, const Tensor& grad, const Tensor* buf, double decay, const Sgd& o) {
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "twoway_sgd_update", [&] {
    sgd_update<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                         buf == nullptr ? nullptr : buf->data_ptr<scalar_t>(), param.numel(),
                         static_cast<scalar_t>(decay), o);
  });
}

void check_updatable(TensorList params, TensorList buffers, bool momentum, const Tensor& x) {
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& q = params[i];
    TORCH_CHECK(q.is_contiguous(), "parameter ", i, " must be contiguous to be updated in place");
    TORCH_CHECK(q.scalar_type() == x.scalar_type() && q.device() == x.device(), "parameter ", i, " is ",
                q.scalar_type(), " on ", q.device(), ", x is ", x.scalar_type(), " on ", x.device());
  }
  if (!momentum) {
    TORCH_CHECK(buffers.empty(), "momentum_buffers must be empty when momentum is 0, got ", buffers.size());
    return;
  }
  TORCH_CHECK(buffers.size() == params.size(), "momentum_buffers must hold one buffer per parameter (",
              params.size(), "), got ", buffers.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& b = buffers[i];
    TORCH_CHECK(b.sizes() == params[i].sizes() && b.scalar_type() == params[i].scalar_type() &&
                    b.device() == params[i].device() && b.is_contiguous(),
                "momentum buffer ", i, " must be a contiguous tensor like its parameter ", params[i].sizes(), " ",
                params[i].scalar_type(), ", got ", b.sizes(), " ", b.scalar_type());
  }
}

using StepResult = std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>;

StepResult twoway_sgd_step_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                               TensorList gamma, TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p,
                               int64_t repr, double leak, double eps, bool act_first,
                               at::ArrayRef<double> coefficients, bool correlation, double decorrelation_eps,
                               bool before_dropout, TensorList momentum_buffers, double lr, double momentum,
                               double dampening, bool nesterov, double weight_decay, bool maximize) {
  // The parameters change in place, outside autograd (the Autograd key falls through, below).
  TORCH_CHECK(!c10::GradMode::is_enabled(),
              "twoway_sgd_step updates parameters in place: call it under torch.no_grad()");
  // The ATen calls inside (GEMMs, views, allocations) skip the autograd and view-tracking layers.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<Tensor> params;
  for (TensorList list : {weights, bias, gamma, beta}) params.insert(params.end(), list.begin(), list.end());
  check_updatable(params, momentum_buffers, momentum != 0.0, x);
  // The dropout masks drawn once: the backward takes the forward's (nothing outlives the call).
  std::vector<Tensor> keep;
  const auto [x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std] =
      twoway_net_cpu(x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, &keep);
  // The batch means as the running means take them (twoway_fast.fused.slot_means): with the bias the
  // network op skips where batch norm cancels it, taken before the update changes the bias.
  const int64_t n = static_cast<int64_t>(weights.size()) - 1;
  std::vector<Tensor> bn_mean;
  for (int64_t slot = 0; slot < 2 * n; ++slot)
    bn_mean.push_back(act_first ? mean[slot] : mean[slot] + bias[slot < n ? slot : slot + 1]);
  const Tensor& hx_dec = before_dropout ? hx_pre : hx;
  const Tensor& hy_dec = before_dropout ? hy_pre : hy;
  auto [terms, cx, cy] =
      twoway_loss_cpu(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gamma, coefficients, correlation,
                      decorrelation_eps);
  auto grad_terms = at::zeros_like(terms);
  grad_terms[0] = 1;  // the total is optimised; the other terms are reported
  // No weights: their decay's gradient is added by the update.
  auto [g_xh, g_yh, g_hx, g_hy, g_hxd, g_hyd, unused, g_gamma] =
      twoway_loss_backward_cpu(grad_terms, x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, {}, gamma, cx, cy,
                               coefficients, correlation, decorrelation_eps);
  c10::optional<Tensor> g_hx_pre, g_hy_pre;
  if (before_dropout) {
    g_hx_pre = g_hxd, g_hy_pre = g_hyd;
  } else {  // hx is both the midway and the decorrelation input: its two gradients add up
    g_hx = g_hx + g_hxd, g_hy = g_hy + g_hyd;
  }
  const Sgd o{lr, momentum, dampening, weight_decay, nesterov, maximize};
  const double decay = 2.0 * coefficients[4];  // d/dW of wd ||W||^2
  const auto buffer = [&](size_t i) { return momentum_buffers.empty() ? nullptr : &momentum_buffers[i]; };
  auto [gx, gy, grad_w, grad_b, grad_gamma, grad_beta] = twoway_net_backward_cpu(
      g_xh, g_yh, g_hx, g_hy, g_hx_pre, g_hy_pre, x, y, weights, gamma, beta, rng_states, p, repr, leak,
      act_first, z, mean, std, false, [&](int64_t k, Tensor& dw) { update(weights[k], dw, buffer(k), decay, o); },
      &keep);
  std::vector<Tensor> grads = grad_w;
  grads.insert(grads.end(), grad_b.begin(), grad_b.end());
  for (size_t i = 0; i < grad_gamma.size(); ++i) grads.push_back(grad_gamma[i].add_(g_gamma[i]));
  grads.insert(grads.end(), grad_beta.begin(), grad_beta.end());
  for (size_t i = weights.size(); i < params.size(); ++i) update(params[i], grads[i], buffer(i), 0.0, o);
  return {terms, grads, bn_mean, std};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) { m.impl("twoway_sgd_step", &twoway_sgd_step_cpu); }

// Not differentiable, and run without grad mode (checked above): straight to the kernel, without
// autograd's not-implemented fallback, which walks every tensor argument each call.
TORCH_LIBRARY_IMPL(twoway_fast, Autograd, m) { m.impl("twoway_sgd_step", torch::CppFunction::makeFallthrough()); }

}  // namespace twoway_fast
