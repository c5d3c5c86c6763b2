// CPU kernels of the training-step ops (twoway_fast.step.direct.DirectStep): one call runs the network
// op, the loss op, the loss's backward and the network's backward as the autograd step does, and returns
// the loss terms, every parameter's gradient and the batch statistics. twoway_step_gradients stops
// there (the caller's optimiser updates); twoway_sgd_step also applies torch.optim.SGD's update (weight
// decay, momentum, dampening, Nesterov, maximize) to each parameter in the pass that completes its
// gradient: a weight right after its gradient's GEMM, on the thread that ran it, while the gradient is in
// that core's cache. The first SGD step, which creates the momentum buffers, is the optimiser's own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/cpu_builds.h"  // run_fastest, with_flags
#include "loss_terms.h"
#include "twoway_loss_common.h"  // check_loss_inputs

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

struct Sgd {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// grad += decay * param (the loss's weight-decay gradient, LossPass::weight_grad_factor: rounded product,
// then the sum, as autograd adds the loss's gradient to the network's); then, with o, torch.optim.SGD's
// update of param and its momentum buffer buf (null without momentum). Returns the sum of param^2 before
// the update, in double (for LossPass::add_weight_squares, summed here where the weights are read
// anyway), in kLanes partial sums added in lane order (one order, so the baseline and AVX-512 builds give
// the same bits).
template <typename T>
double complete_and_update(T* param, T* grad, T* buf, int64_t n, T decay, const Sgd* o) {
  constexpr int kLanes = 16;
  const Sgd none{};
  const Sgd& s = o != nullptr ? *o : none;
  const auto loop = [&](auto has_decay, auto update, auto has_wd, auto has_buf) {
    return at::parallel_reduce(0, n, 1 << 15, 0.0, [&](int64_t i0, int64_t i1, double acc) {
      double total = 0.0;
      run_fastest([&] {
        // Locals, not the captured references: the stores below could alias those, and GCC would reload
        // them every element and keep the loop scalar.
        T* __restrict p_ = param;
        T* __restrict g_ = grad;
        T* __restrict b_ = buf;
        const T dec = decay, lr = static_cast<T>(s.lr), mom = static_cast<T>(s.momentum);
        const T wd = static_cast<T>(s.weight_decay), undamped = static_cast<T>(1.0 - s.dampening);
        const T sign = s.maximize ? T(-1) : T(1);
        const bool nesterov = s.nesterov;
        double lanes[kLanes] = {};
        const auto element = [&](int64_t i, double& lane) {
          const T p = p_[i];
          lane += static_cast<double>(p) * static_cast<double>(p);
          T g = g_[i];
          if constexpr (has_decay) {
            const T d = dec * p;
            g = g + d;
            g_[i] = g;
          }
          if constexpr (update) {
            T step = sign * g;
            if constexpr (has_wd) step = step + wd * p;
            if constexpr (has_buf) {
              const T b = b_[i] * mom + undamped * step;
              b_[i] = b;
              step = nesterov ? step + mom * b : b;
            }
            p_[i] = p - lr * step;
          }
        };
        int64_t i = i0;
        for (; i + kLanes <= i1; i += kLanes)
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) element(i + l, lanes[l]);
        for (int l = 0; i + l < i1; ++l) element(i + l, lanes[l]);
        for (int l = 0; l < kLanes; ++l) total += lanes[l];
      });
      return acc + total;
    }, std::plus<double>());
  };
  double squares = 0.0;
  with_flags(decay != T(0), o != nullptr, s.weight_decay != 0.0, [&](auto has_decay, auto upd, auto has_wd) {
    if (buf != nullptr) {
      squares = loop(has_decay, upd, has_wd, std::true_type{});
    } else {
      squares = loop(has_decay, upd, has_wd, std::false_type{});
    }
  });
  return squares;
}

double complete_and_update(const Tensor& param, const Tensor& grad, const Tensor* buf, double decay, const Sgd* o) {
  double squares = 0.0;
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "twoway_sgd_update", [&] {
    squares = complete_and_update<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                            buf == nullptr ? nullptr : buf->data_ptr<scalar_t>(), param.numel(),
                                            static_cast<scalar_t>(decay), o);
  });
  return squares;
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

// The network and the loss as the training-step ops take them.
struct StepArgs {
  const Tensor& x;
  const Tensor& y;
  TensorList weights, bias, gamma, beta;
  const Tensor& rng_states;
  at::ArrayRef<double> p;
  int64_t repr;
  at::ArrayRef<double> leak;
  double eps;
  bool act_first;
  at::ArrayRef<double> coefficients;
  int64_t loss_options;
  double decorrelation_eps;
};

// Both ops: with sgd, each parameter also takes SGD's update (momentum_buffers as in the schema).
StepResult training_step(const StepArgs& a, const Sgd* sgd, TensorList momentum_buffers) {
  // The ATen calls inside (GEMMs, views, allocations) skip the autograd and view-tracking layers.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<Tensor> params;
  for (TensorList list : {a.weights, a.bias, a.gamma, a.beta}) params.insert(params.end(), list.begin(), list.end());
  if (sgd != nullptr) check_updatable(params, momentum_buffers, sgd->momentum != 0.0, a.x);
  // The dropout masks drawn once: the backward takes the forward's (nothing outlives the call).
  std::vector<Tensor> keep;
  const auto [x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std] =
      twoway_net_cpu(a.x, a.y, a.weights, a.bias, a.gamma, a.beta, a.rng_states, a.p, a.repr, a.leak, a.eps,
                     a.act_first, &keep);
  const bool before_dropout = has(a.loss_options, option::kBeforeDropout);
  const Tensor& hx_dec = before_dropout ? hx_pre : hx;
  const Tensor& hy_dec = before_dropout ? hy_pre : hy;
  // No weights: the sum of their squares (the loss's weight-decay term) and its gradient come from the
  // pass that completes their gradients, which reads them anyway; the total is summed after it.
  constexpr std::array<double, kTerms> kGradOfTotal = {1.0};  // the gradients of the total
  check_loss_inputs(a.x, a.y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, {}, a.gamma, a.coefficients, a.loss_options);
  auto loss = twoway_loss_pass({a.x, a.y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, {}, a.gamma}, a.coefficients,
                               a.loss_options, a.decorrelation_eps, /*sums=*/true, kGradOfTotal.data());
  Tensor g_hx = loss.grad_hx, g_hy = loss.grad_hy;
  c10::optional<Tensor> g_hx_pre, g_hy_pre;
  if (before_dropout) {
    g_hx_pre = loss.grad_hx_dec, g_hy_pre = loss.grad_hy_dec;
  } else {  // hx is both the midway and the decorrelation input: its two gradients add up
    g_hx = g_hx + loss.grad_hx_dec, g_hy = g_hy + loss.grad_hy_dec;
  }
  const double decay = loss.weight_grad_factor;
  std::vector<double> weight_squares(a.weights.size(), 0.0);  // each written by the thread of its GEMM
  const auto buffer = [&](size_t i) { return momentum_buffers.empty() ? nullptr : &momentum_buffers[i]; };
  auto [gx, gy, grad_w, grad_b, grad_gamma, grad_beta] = twoway_net_backward_cpu(
      loss.grad_x_hat, loss.grad_y_hat, g_hx, g_hy, g_hx_pre, g_hy_pre, a.x, a.y, a.weights, a.gamma, a.beta,
      a.rng_states, a.p, a.repr, a.leak, a.act_first, z, mean, std, false,
      [&](int64_t k, Tensor& dw) {  // (contiguous already where updated: check_updatable)
        weight_squares[k] = complete_and_update(a.weights[k].contiguous(), dw, buffer(k), decay, sgd);
      },
      &keep);
  std::vector<Tensor> grads = grad_w;
  grads.insert(grads.end(), grad_b.begin(), grad_b.end());
  for (size_t i = 0; i < grad_gamma.size(); ++i) grads.push_back(grad_gamma[i].add_(loss.grad_gammas[i]));
  grads.insert(grads.end(), grad_beta.begin(), grad_beta.end());
  if (sgd != nullptr) {
    for (size_t i = a.weights.size(); i < params.size(); ++i)
      complete_and_update(params[i], grads[i], buffer(i), 0.0, sgd);
  }
  for (double w : weight_squares) loss.add_weight_squares(w);
  return {loss.terms(a.coefficients, a.loss_options, a.x), grads, mean, std};
}

StepResult twoway_step_gradients_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                                     TensorList gamma, TensorList beta, const Tensor& rng_states,
                                     at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, double eps,
                                     bool act_first, at::ArrayRef<double> coefficients, int64_t loss_options,
                                     double decorrelation_eps) {
  const StepArgs a{x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, coefficients,
                   loss_options, decorrelation_eps};
  return training_step(a, nullptr, {});
}

StepResult twoway_sgd_step_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                               TensorList gamma, TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p,
                               int64_t repr, at::ArrayRef<double> leak, double eps, bool act_first,
                               at::ArrayRef<double> coefficients, int64_t loss_options, double decorrelation_eps,
                               TensorList momentum_buffers,
                               double lr, double momentum, double dampening, bool nesterov, double weight_decay,
                               bool maximize) {
  // The parameters change in place, outside autograd (the Autograd key falls through: csrc/autograd.cpp).
  TORCH_CHECK(!c10::GradMode::is_enabled(),
              "twoway_sgd_step updates parameters in place: call it under torch.no_grad()");
  const StepArgs a{x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, coefficients,
                   loss_options, decorrelation_eps};
  const Sgd sgd{lr, momentum, dampening, weight_decay, nesterov, maximize};
  return training_step(a, &sgd, momentum_buffers);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_step_gradients", &twoway_step_gradients_cpu);
  m.impl("twoway_sgd_step", &twoway_sgd_step_cpu);
}

}  // namespace twoway_fast
