// CPU kernels of the training-step ops (twoway_fast.step.direct.DirectStep): one call runs the network
// op, the loss op, the loss's backward and the network's backward as the autograd step does, and returns
// the loss terms, every parameter's gradient and the batch statistics. twoway_step_gradients stops
// there (the caller's optimiser updates); twoway_sgd_step and twoway_adam_step also apply
// torch.optim.SGD's or Adam's update (csrc/cpu/parameter_updates.h) to each flagged parameter in the pass
// that completes its gradient: a weight right after its gradient's GEMM, on the thread that ran it, while
// the gradient is in that core's cache. The first step, which creates the optimiser's state, is the
// optimiser's own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/parameter_updates.h"
#include "loss_terms.h"
#include "twoway_loss_common.h"  // check_loss_inputs

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

// The parameters that take the update (update[i]) must be contiguous tensors of x's dtype and device.
void check_updatable(TensorList params, const std::vector<bool>& update, const Tensor& x) {
  TORCH_CHECK(update.size() == params.size(), "update must hold one flag per parameter (", params.size(),
              "), got ", update.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (!update[i]) continue;
    const Tensor& q = params[i];
    TORCH_CHECK(q.is_contiguous(), "parameter ", i, " must be contiguous to be updated in place");
    TORCH_CHECK(q.scalar_type() == x.scalar_type() && q.device() == x.device(), "parameter ", i, " is ",
                q.scalar_type(), " on ", q.device(), ", x is ", x.scalar_type(), " on ", x.device());
  }
}

size_t updated_count(const std::vector<bool>& update) {
  return static_cast<size_t>(std::count(update.begin(), update.end(), true));
}

// An optimiser state list (name: momentum_buffers, exp_avgs, ...) must hold one contiguous tensor like its
// parameter per updated parameter, in the parameters' order; returns them per parameter (null: none).
std::vector<const Tensor*> state_of(const char* name, TensorList states, TensorList params,
                                    const std::vector<bool>& update) {
  const size_t updated = updated_count(update);
  TORCH_CHECK(states.size() == updated, name, " must hold one tensor per updated parameter (", updated, "), got ",
              states.size());
  std::vector<const Tensor*> out(params.size(), nullptr);
  for (size_t i = 0, j = 0; i < params.size(); ++i) {
    if (!update[i]) continue;
    const Tensor& s = states[j];
    TORCH_CHECK(s.sizes() == params[i].sizes() && s.scalar_type() == params[i].scalar_type() &&
                    s.device() == params[i].device() && s.is_contiguous(),
                name, " ", j, " must be a contiguous tensor like its parameter (", i, ": ", params[i].sizes(), " ",
                params[i].scalar_type(), "), got ", s.sizes(), " ", s.scalar_type());
    out[i] = &states[j++];
  }
  return out;
}

// One parameter's optimiser state (the tensors torch.optim keeps for it) and Adam's step count.
struct ParamState {
  const Tensor *momentum = nullptr, *exp_avg = nullptr, *exp_avg_sq = nullptr, *max_exp_avg_sq = nullptr;
  double step = 0.0;
};

template <typename T>
T* data_of(const Tensor* t) {
  return t == nullptr ? nullptr : t->data_ptr<T>();
}

// complete_and_update (csrc/cpu/parameter_updates.h) on tensors: param's gradient completed with decay,
// then updated by sgd or adam (or neither).
double complete_and_update(const Tensor& param, const Tensor& grad, double decay, const Sgd* sgd, const Adam* adam,
                           const ParamState& st) {
  double squares = 0.0;
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "twoway_parameter_update", [&] {
    const State<scalar_t> state{data_of<scalar_t>(st.momentum), data_of<scalar_t>(st.exp_avg),
                                data_of<scalar_t>(st.exp_avg_sq), data_of<scalar_t>(st.max_exp_avg_sq), st.step};
    squares = complete_and_update<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), param.numel(),
                                            static_cast<scalar_t>(decay), sgd, adam, state);
  });
  return squares;
}

// The update a step op applies (SGD's, Adam's, or none: twoway_step_gradients) and to which parameters,
// each with its state.
struct StepUpdate {
  const Sgd* sgd = nullptr;
  const Adam* adam = nullptr;
  std::vector<bool> update;       // per parameter, in the ops' order (weights, bias, gamma, beta)
  std::vector<ParamState> state;  // per parameter

  bool updates(size_t i) const { return !update.empty() && update[i]; }

  // Completes parameter i's gradient with the loss's weight decay (decay: 0 for all but the weights), then
  // updates it where the op does. Returns the sum of param^2 before the update.
  double operator()(size_t i, const Tensor& param, const Tensor& grad, double decay) const {
    if (!updates(i)) return complete_and_update(param, grad, decay, nullptr, nullptr, ParamState{});
    return complete_and_update(param, grad, decay, sgd, adam, state[i]);
  }
};

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
  Products products;
};

// The GEMMs' dtype: the inputs' own (nullopt or x's) or bfloat16.
Products checked_products(c10::optional<at::ScalarType> products, const Tensor& x) {
  TORCH_CHECK(!products || *products == x.scalar_type() || *products == at::kBFloat16,
              "products must be None, x's dtype (", x.scalar_type(), ") or torch.bfloat16, got ", *products);
  return products;
}

// The parameters in the ops' order: weights, bias, gamma, beta.
std::vector<Tensor> parameters_of(const StepArgs& a) {
  std::vector<Tensor> params;
  for (TensorList list : {a.weights, a.bias, a.gamma, a.beta}) params.insert(params.end(), list.begin(), list.end());
  return params;
}

// Every step op: the gradients, each parameter's completed and updated by u as soon as it is known.
StepResult training_step(const StepArgs& a, const StepUpdate& u) {
  // The ATen calls inside (GEMMs, views, allocations) skip the autograd and view-tracking layers.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const std::vector<Tensor> params = parameters_of(a);
  // The dropout masks drawn and the weights cast once: the backward takes the forward's (nothing outlives
  // the call).
  NetCarry carry;
  const auto [x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std] =
      twoway_net_cpu(a.x, a.y, a.weights, a.bias, a.gamma, a.beta, a.rng_states, a.p, a.repr, a.leak, a.eps,
                     a.act_first, &carry, a.products);
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
  auto [gx, gy, grad_w, grad_b, grad_gamma, grad_beta] = twoway_net_backward_cpu(
      loss.grad_x_hat, loss.grad_y_hat, g_hx, g_hy, g_hx_pre, g_hy_pre, a.x, a.y, a.weights, a.gamma, a.beta,
      a.rng_states, a.p, a.repr, a.leak, a.act_first, z, mean, std, false,
      [&](int64_t k, Tensor& dw) {  // (contiguous already where updated: check_updatable)
        weight_squares[k] = u(k, a.weights[k].contiguous(), dw, decay);
      },
      &carry, a.products);
  std::vector<Tensor> grads = grad_w;
  grads.insert(grads.end(), grad_b.begin(), grad_b.end());
  for (size_t i = 0; i < grad_gamma.size(); ++i) grads.push_back(grad_gamma[i].add_(loss.grad_gammas[i]));
  grads.insert(grads.end(), grad_beta.begin(), grad_beta.end());
  for (size_t i = a.weights.size(); i < params.size(); ++i) {
    if (u.updates(i)) u(i, params[i], grads[i], 0.0);
  }
  for (double w : weight_squares) loss.add_weight_squares(w);
  return {loss.terms(a.coefficients, a.loss_options, a.x), grads, mean, std};
}

StepResult twoway_step_gradients_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                                     TensorList gamma, TensorList beta, const Tensor& rng_states,
                                     at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, double eps,
                                     bool act_first, at::ArrayRef<double> coefficients, int64_t loss_options,
                                     double decorrelation_eps, c10::optional<at::ScalarType> products) {
  const StepArgs a{x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, coefficients,
                   loss_options, decorrelation_eps, checked_products(products, x)};
  return training_step(a, StepUpdate{});
}

// The parameters change in place, outside autograd (the Autograd key falls through: csrc/autograd.cpp).
void check_no_grad(const char* op) {
  TORCH_CHECK(!c10::GradMode::is_enabled(), op, " updates parameters in place: call it under torch.no_grad()");
}

StepResult twoway_sgd_step_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                               TensorList gamma, TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p,
                               int64_t repr, at::ArrayRef<double> leak, double eps, bool act_first,
                               at::ArrayRef<double> coefficients, int64_t loss_options, double decorrelation_eps,
                               c10::optional<at::ScalarType> products, const c10::List<bool>& update_flags, TensorList momentum_buffers, double lr,
                               double momentum, double dampening, bool nesterov, double weight_decay, bool maximize) {
  check_no_grad("twoway_sgd_step");
  const StepArgs a{x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, coefficients,
                   loss_options, decorrelation_eps, checked_products(products, x)};
  const std::vector<Tensor> params = parameters_of(a);
  const std::vector<bool> update(update_flags.begin(), update_flags.end());
  check_updatable(params, update, x);
  const Sgd sgd{lr, momentum, dampening, weight_decay, nesterov, maximize};
  StepUpdate u{&sgd, nullptr, update, std::vector<ParamState>(params.size())};
  if (momentum == 0.0) {
    TORCH_CHECK(momentum_buffers.empty(), "momentum_buffers must be empty when momentum is 0, got ",
                momentum_buffers.size());
  } else {
    const auto buffers = state_of("momentum_buffers", momentum_buffers, params, update);
    for (size_t i = 0; i < params.size(); ++i) u.state[i].momentum = buffers[i];
  }
  return training_step(a, u);
}

StepResult twoway_adam_step_cpu(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                                TensorList gamma, TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p,
                                int64_t repr, at::ArrayRef<double> leak, double eps, bool act_first,
                                at::ArrayRef<double> coefficients, int64_t loss_options, double decorrelation_eps,
                                c10::optional<at::ScalarType> products, const c10::List<bool>& update_flags, TensorList exp_avgs, TensorList exp_avg_sqs,
                                TensorList max_exp_avg_sqs, TensorList state_steps, double lr, double beta1,
                                double beta2, double epsilon, double weight_decay, bool decoupled_weight_decay,
                                bool amsgrad, bool maximize) {
  check_no_grad("twoway_adam_step");
  const StepArgs a{x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first, coefficients,
                   loss_options, decorrelation_eps, checked_products(products, x)};
  const std::vector<Tensor> params = parameters_of(a);
  const std::vector<bool> update(update_flags.begin(), update_flags.end());
  check_updatable(params, update, x);
  const Adam adam{lr, beta1, beta2, epsilon, weight_decay, decoupled_weight_decay, amsgrad, maximize};
  StepUpdate u{nullptr, &adam, update, std::vector<ParamState>(params.size())};
  const auto m = state_of("exp_avgs", exp_avgs, params, update);
  const auto v = state_of("exp_avg_sqs", exp_avg_sqs, params, update);
  const auto vmax = amsgrad ? state_of("max_exp_avg_sqs", max_exp_avg_sqs, params, update)
                            : std::vector<const Tensor*>(params.size(), nullptr);
  TORCH_CHECK(amsgrad || max_exp_avg_sqs.empty(), "max_exp_avg_sqs must be empty without amsgrad, got ",
              max_exp_avg_sqs.size());
  const size_t updated = updated_count(update);
  TORCH_CHECK(state_steps.size() == updated, "state_steps must hold one step count per updated parameter (",
              updated, "), got ", state_steps.size());
  for (const Tensor& s : state_steps) {
    TORCH_CHECK(s.numel() == 1 && s.is_floating_point() && s.device().is_cpu(),
                "each of state_steps must be a one-element floating-point CPU tensor (torch.optim.Adam's \"step\"), "
                "got ", s.sizes(), " ", s.scalar_type(), " on ", s.device());
  }
  for (size_t i = 0, j = 0; i < params.size(); ++i) {
    if (!update[i]) continue;
    state_steps[j].add_(1);  // as torch.optim.Adam counts the step before its update
    u.state[i] = ParamState{nullptr, m[i], v[i], vmax[i], state_steps[j++].item<double>()};
  }
  return training_step(a, u);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_step_gradients", &twoway_step_gradients_cpu);
  m.impl("twoway_sgd_step", &twoway_sgd_step_cpu);
  m.impl("twoway_adam_step", &twoway_adam_step_cpu);
}

}  // namespace twoway_fast
