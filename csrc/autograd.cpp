// Every op's autograd, in C++ for every device. The network and loss ops: a training step crosses them
// twice, and the Python alternative (torch.library.register_autograd) spent 0.3-0.6 ms per call
// flattening, saving and validating their ~40 list tensors. Forward and backward stay separate ops, so
// opcheck, the fake kernels of twoway_fast/ops.py and torch.compile see the same graph as before.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "op_results.h"
namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void append(variable_list& to, TensorList from) { to.insert(to.end(), from.begin(), from.end()); }

std::vector<Tensor> take(const variable_list& from, size_t& at, size_t count) {
  std::vector<Tensor> out(from.begin() + at, from.begin() + at + count);
  at += count;
  return out;
}

// Gradients for the trailing arguments that are no tensors (or need none): undefined.
void pad_undefined(variable_list& grads, size_t count) { grads.resize(grads.size() + count); }

// What the two hidden-block functions keep for their backward ops, which take the same arguments.
void save_block(AutogradContext* ctx, const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                const Tensor& std, const Tensor& rng_state, double p, double leak, bool act_first) {
  ctx->save_for_backward({z, gamma, beta, mean, std, rng_state});
  ctx->saved_data["p"] = p;
  ctx->saved_data["leak"] = leak;
  ctx->saved_data["act_first"] = act_first;
}

// backward_op(grad_out, z, gamma, beta, mean, std, rng_state, p, leak, act_first) with what save_block kept.
template <typename Op>
auto call_block_backward(const Op& backward_op, AutogradContext* ctx, const Tensor& grad_out) {
  const auto s = ctx->get_saved_variables();
  return backward_op.call(grad_out, s[0], s[1], s[2], s[3], s[4], s[5], ctx->saved_data["p"].toDouble(),
                          ctx->saved_data["leak"].toDouble(), ctx->saved_data["act_first"].toBool());
}

// The hidden block (one position, batch statistics): mean and std are outputs, not differentiable.
class HiddenBlockFunction : public torch::autograd::Function<HiddenBlockFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& z, const Tensor& gamma, const Tensor& beta,
                               const Tensor& rng_state, double p, double leak, double eps, bool act_first) {
    static const auto block = op<BlockResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                                             double, double, bool)>("twoway_fast::hidden_block");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, mean, std] = block.call(z, gamma, beta, rng_state, p, leak, eps, act_first);
    save_block(ctx, z, gamma, beta, mean, std, rng_state, p, leak, act_first);
    ctx->mark_non_differentiable({mean, std});
    return {out, mean, std};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto block_backward =
        op<BlockResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                       const Tensor&, double, double, bool)>("twoway_fast::hidden_block_backward");
    auto [grad_z, grad_gamma, grad_beta] = call_block_backward(block_backward, ctx, grads[0]);
    variable_list out = {grad_z, grad_gamma, grad_beta};
    pad_undefined(out, 5);  // rng_state, p, leak, eps, act_first
    return out;
  }
};

BlockResult hidden_block_autograd(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& rng_state,
                                  double p, double leak, double eps, bool act_first) {
  const auto out = HiddenBlockFunction::apply(z, gamma, beta, rng_state, p, leak, eps, act_first);
  return {out[0], out[1], out[2]};
}

// The hidden block with its statistics given (over the rows of every process): differentiable in them.
class HiddenBlockWithStatsFunction : public torch::autograd::Function<HiddenBlockWithStatsFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& z, const Tensor& gamma, const Tensor& beta,
                        const Tensor& mean, const Tensor& std, const Tensor& rng_state, double p, double leak,
                        bool act_first) {
    static const auto block =
        op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                  double, bool)>("twoway_fast::hidden_block_with_stats");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    save_block(ctx, z, gamma, beta, mean, std, rng_state, p, leak, act_first);
    return block.call(z, gamma, beta, mean, std, rng_state, p, leak, act_first);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto block_backward = op<BlockWithStatsBackwardResult(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
        double, double, bool)>("twoway_fast::hidden_block_with_stats_backward");
    auto [grad_z, grad_mean, grad_std, grad_gamma, grad_beta] = call_block_backward(block_backward, ctx, grads[0]);
    variable_list out = {grad_z, grad_gamma, grad_beta, grad_mean, grad_std};
    pad_undefined(out, 4);  // rng_state, p, leak, act_first
    return out;
  }
};

Tensor hidden_block_with_stats_autograd(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                                        const Tensor& std, const Tensor& rng_state, double p, double leak,
                                        bool act_first) {
  return HiddenBlockWithStatsFunction::apply(z, gamma, beta, mean, std, rng_state, p, leak, act_first);
}

class NetFunction : public torch::autograd::Function<NetFunction> {
 public:
  // Outputs flattened: x_hat, y_hat, hx, hy, hx_pre, hy_pre, then z, mean, std (2n each).
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, TensorList weights,
                               TensorList bias, TensorList gamma, TensorList beta, const Tensor& rng_states,
                               at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, double eps,
                               bool act_first) {
    static const auto net = op<NetResult(const Tensor&, const Tensor&, TensorList, TensorList, TensorList,
                                         TensorList, const Tensor&, at::ArrayRef<double>, int64_t,
                                         at::ArrayRef<double>, double, bool)>("twoway_fast::twoway_net");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std] =
        net.call(x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first);
    variable_list saved = {x, y, rng_states};
    for (TensorList list : {weights, gamma, beta, TensorList(z), TensorList(mean), TensorList(std)})
      append(saved, list);
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["n_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["n_slots"] = static_cast<int64_t>(gamma.size());
    ctx->saved_data["p"] = p.vec();
    ctx->saved_data["repr"] = repr;
    ctx->saved_data["leak"] = leak.vec();
    ctx->saved_data["act_first"] = act_first;
    variable_list stats;
    for (TensorList list : {TensorList(z), TensorList(mean), TensorList(std)}) append(stats, list);
    ctx->mark_non_differentiable(stats);
    ctx->set_materialize_grads(false);  // unused outputs (z, stats, often hx_pre) cost no zero tensors
    variable_list out = {x_hat, y_hat, hx, hy, hx_pre, hy_pre};
    append(out, stats);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto net_backward = op<NetBackwardResult(
        const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
        const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, const Tensor&,
        const Tensor&, TensorList, TensorList, TensorList, const Tensor&, at::ArrayRef<double>, int64_t,
        at::ArrayRef<double>, bool, TensorList, TensorList, TensorList, bool)>("twoway_fast::twoway_net_backward");
    const auto saved = ctx->get_saved_variables();
    const auto n_weights = static_cast<size_t>(ctx->saved_data["n_weights"].toInt());
    const auto n_slots = static_cast<size_t>(ctx->saved_data["n_slots"].toInt());
    size_t at = 3;
    const auto weights = take(saved, at, n_weights), gamma = take(saved, at, n_slots),
               beta = take(saved, at, n_slots), z = take(saved, at, n_slots), mean = take(saved, at, n_slots),
               std = take(saved, at, n_slots);
    const auto optional = [&](size_t i) { return grads[i].defined() ? c10::optional<Tensor>(grads[i]) : c10::nullopt; };
    const bool need_x = ctx->needs_input_grad(0), need_y = ctx->needs_input_grad(1);
    const auto p = ctx->saved_data["p"].toDoubleVector(), leak = ctx->saved_data["leak"].toDoubleVector();
    auto [grad_x, grad_y, grad_w, grad_b, grad_g, grad_be] = net_backward.call(
        optional(0), optional(1), optional(2), optional(3), optional(4), optional(5), saved[0], saved[1], weights,
        gamma, beta, saved[2], p, ctx->saved_data["repr"].toInt(), leak,
        ctx->saved_data["act_first"].toBool(), z, mean, std, need_x || need_y);
    variable_list out = {need_x ? grad_x : Tensor(), need_y ? grad_y : Tensor()};
    for (TensorList list : {TensorList(grad_w), TensorList(grad_b), TensorList(grad_g), TensorList(grad_be)})
      append(out, list);
    pad_undefined(out, 6);  // rng_states, p, repr_layer, leak, eps, act_first
    return out;
  }
};

NetResult twoway_net_autograd(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias,
                              TensorList gamma, TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p,
                              int64_t repr, at::ArrayRef<double> leak, double eps, bool act_first) {
  const auto out = NetFunction::apply(x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first);
  size_t at = 6;
  const size_t slots = gamma.size();
  auto z = take(out, at, slots), mean = take(out, at, slots), std = take(out, at, slots);
  return {out[0], out[1], out[2], out[3], out[4], out[5], std::move(z), std::move(mean), std::move(std)};
}

class LossFunction : public torch::autograd::Function<LossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, const Tensor& x_hat,
                               const Tensor& y_hat, const Tensor& hx, const Tensor& hy, const Tensor& hx_dec,
                               const Tensor& hy_dec, TensorList weights, TensorList gammas,
                               at::ArrayRef<double> coefficients, int64_t options, double eps) {
    static const auto loss =
        op<LossResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      const Tensor&, const Tensor&, TensorList, TensorList, at::ArrayRef<double>, int64_t,
                      double)>("twoway_fast::twoway_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [terms, cx, cy] = loss.call(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients,
                                     options, eps);
    variable_list saved = {x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, cx, cy};
    append(saved, weights);
    append(saved, gammas);
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["n_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["coefficients"] = coefficients.vec();
    ctx->saved_data["options"] = options;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({cx, cy});
    return {terms, cx, cy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto loss_backward = op<LossBackwardResult(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&, const Tensor&, TensorList, TensorList, const Tensor&, const Tensor&, at::ArrayRef<double>,
        int64_t, double)>("twoway_fast::twoway_loss_backward");
    const auto s = ctx->get_saved_variables();
    const auto n_weights = static_cast<size_t>(ctx->saved_data["n_weights"].toInt());
    size_t at = 10;
    const auto weights = take(s, at, n_weights), gammas = take(s, at, s.size() - at);
    const auto coefficients = ctx->saved_data["coefficients"].toDoubleVector();
    auto [g_xh, g_yh, g_hx, g_hy, g_hxd, g_hyd, g_w, g_g] = loss_backward.call(
        grads[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], weights, gammas, s[8], s[9], coefficients,
        ctx->saved_data["options"].toInt(), ctx->saved_data["eps"].toDouble());
    // x and y enter the reconstruction distances with the opposite sign of x_hat and y_hat.
    variable_list out = {ctx->needs_input_grad(0) ? -g_xh : Tensor(), ctx->needs_input_grad(1) ? -g_yh : Tensor(),
                         g_xh, g_yh, g_hx, g_hy, g_hxd, g_hyd};
    append(out, g_w);
    append(out, g_g);
    pad_undefined(out, 3);  // coefficients, loss_options, eps
    return out;
  }
};

LossResult twoway_loss_autograd(const Tensor& x, const Tensor& y, const Tensor& x_hat, const Tensor& y_hat,
                                const Tensor& hx, const Tensor& hy, const Tensor& hx_dec, const Tensor& hy_dec,
                                TensorList weights, TensorList gammas, at::ArrayRef<double> coefficients,
                                int64_t options, double eps) {
  const auto out = LossFunction::apply(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients,
                                       options, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, Autograd, m) {
  m.impl("hidden_block", &hidden_block_autograd);
  m.impl("hidden_block_with_stats", &hidden_block_with_stats_autograd);
  m.impl("twoway_net", &twoway_net_autograd);
  m.impl("twoway_loss", &twoway_loss_autograd);
  // Not differentiable, and the SGD step runs without grad mode (checked in csrc/cpu/twoway_step.cpp):
  // straight to the kernels, without autograd's not-implemented fallback, which walks every tensor
  // argument each call.
  m.impl("twoway_step_gradients", torch::CppFunction::makeFallthrough());
  m.impl("twoway_sgd_step", torch::CppFunction::makeFallthrough());
  m.impl("twoway_adam_step", torch::CppFunction::makeFallthrough());
}

}  // namespace twoway_fast
