// CPU kernel of the network-level op: forward and backward of both channels of a 2-Way Net in
// training mode (docs/method.md#the-network), the channels side by side on two threads, the GEMMs
// through ATen and everything else in the passes of block_forward.h and block_backward.h. The channel
// layout (positions, slots, weights, the weight-gradient operands P and Q): csrc/channel_layout.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cpu/block_backward.h"
#include "cpu/block_forward.h"
#include "cpu/cpu_kernels.h"
#include "cpu/dropout_multipliers.h"
#include "channel_layout.h"
#include "cpu/side_by_side.h"
#include "philox.h"
#include "twoway_net_checks.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

// The checked shape, plus the dropout masks of the CPU passes (rng_states read on the host).
struct Net : NetShape {
  std::vector<DropoutMask> masks;
};

Net cpu_net(const Tensor& x, const Tensor& y, TensorList weights, TensorList gamma, TensorList beta,
            const Tensor& rng_states, at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak) {
  Net net;
  static_cast<NetShape&>(net) = check_net(x, y, weights, gamma, beta, rng_states, p, repr, leak);
  const auto states = rng_states.contiguous();
  const int64_t* st = states.data_ptr<int64_t>();
  for (int64_t k = 0; k < net.n; ++k)
    net.masks.push_back(DropoutMask::make(st[3 * k], st[3 * k + 1], st[3 * k + 2], p[k]));
  return net;
}

std::vector<Tensor> all_keep_multipliers(const Net& net, const Tensor& x) {
  std::vector<Tensor> keep;
  for (int64_t k = 0; k < net.n; ++k)
    keep.push_back(keep_multipliers(net.masks[k], net.batch, net.s[k + 1], x.options()));
  return keep;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

const Tensor& maybe_undefined() {
  static const Tensor undefined;
  return undefined;
}

// m (rows, cols) += v per row; on the calling thread unless large (like the block passes).
template <typename T>
void add_row_vector(T* m, const T* v, int64_t rows, int64_t cols) {
  at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict row = m + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) row[j] += v[j];
    }
  });
}

}  // namespace

NetResult twoway_net_cpu(const Tensor& x_in, const Tensor& y_in, TensorList weights_in, TensorList bias_in,
                                TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
                                at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, double eps,
                                bool act_first, NetCarry* carry_out, Products products) {
  const Net net = cpu_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak);
  const int64_t n = net.n, B = net.batch;
  const ChannelLayout L{n};
  check_net_bias(net, bias_in, x_in);
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const auto weights = in_products(contiguous(weights_in), products), bias = contiguous(bias_in);
  const auto gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto keep = all_keep_multipliers(net, x);
  std::vector<Tensor> z(2 * n), mean(2 * n), std(2 * n);
  Tensor h[2], h_pre[2], out[2];
  side_by_side([&](int c) {  // c = 0: X channel, 1: Y channel
    Tensor a = c == 0 ? x : y;
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = L.forward_position(c, step), slot = L.slot(c, k);
      // Batch norm right after the GEMM cancels the bias: skip it (the op's mean then excludes it).
      // Before a LeakyReLU it counts: the block's pass adds it to z.
      z[slot] = tied_mm(a, weights[L.weight(c, k)], L.transposed(c), products);
      const Tensor& b = act_first ? bias[L.bias(c, k)] : maybe_undefined();
      const int64_t cols = net.s[k + 1];
      mean[slot] = at::empty({cols}, x.options());
      std[slot] = at::empty({cols}, x.options());
      Tensor next = at::empty({B, cols}, x.options());
      // Position repr always yields its pre-dropout value too (a copy when nothing is dropped).
      Tensor pre = k == repr ? at::empty({B, cols}, x.options()) : Tensor();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_block_forward", [&] {
        block_forward<scalar_t>(z[slot].data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b), B, cols,
                                block_args<scalar_t>(gamma[slot], beta[slot], keep[k], leak[k], act_first), eps,
                                next.data_ptr<scalar_t>(), pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
                                mean[slot].data_ptr<scalar_t>(), std[slot].data_ptr<scalar_t>());
      });
      if (k == repr) h[c] = next, h_pre[c] = pre;
      a = next;
    }
    out[c] = tied_mm(a, weights[L.weight(c, n)], L.transposed(c), products);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_output_bias", [&] {
      add_row_vector<scalar_t>(out[c].data_ptr<scalar_t>(), bias[L.bias(c, n)].data_ptr<scalar_t>(), B,
                               out[c].size(1));
    });
  });
  if (carry_out != nullptr) *carry_out = {keep, weights};
  return {out[1], out[0], h[0], h[1], h_pre[0], h_pre[1], z, mean, std};
}

NetBackwardResult twoway_net_backward_cpu(
    const c10::optional<Tensor>& grad_x_hat, const c10::optional<Tensor>& grad_y_hat,
    const c10::optional<Tensor>& grad_hx, const c10::optional<Tensor>& grad_hy,
    const c10::optional<Tensor>& grad_hx_pre, const c10::optional<Tensor>& grad_hy_pre, const Tensor& x_in,
    const Tensor& y_in, TensorList weights_in, TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
    at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, bool act_first, TensorList z_in,
    TensorList mean_in, TensorList std_in, bool input_grads, const WeightGradHook& on_weight_grad,
    const NetCarry* carry, Products products) {
  const Net net = cpu_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak);
  const int64_t n = net.n, B = net.batch;
  const ChannelLayout L{n};
  const auto& s = net.s;
  check_net_saved(net, z_in, mean_in, std_in, x_in);
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const auto weights = carry != nullptr ? carry->gemm_weights : in_products(contiguous(weights_in), products);
  const auto gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto z = contiguous(z_in), mean = contiguous(mean_in), std = contiguous(std_in);
  const auto keep = carry != nullptr ? carry->keep : all_keep_multipliers(net, x);
  const auto opts = x.options();
  // The loss's direct gradients at the representation: both or neither (a missing one is zero).
  Tensor extra[2] = {grad_or_undefined(grad_hx, {B, s[repr + 1]}, x, "grad_hx"),
                     grad_or_undefined(grad_hy, {B, s[repr + 1]}, x, "grad_hy")};
  Tensor extra_pre[2] = {grad_or_undefined(grad_hx_pre, {B, s[repr + 1]}, x, "grad_hx_pre"),
                         grad_or_undefined(grad_hy_pre, {B, s[repr + 1]}, x, "grad_hy_pre")};
  for (int c = 0; c < 2; ++c) pair_up(extra[c], extra_pre[c]);
  std::vector<Tensor> P, Q;
  ChannelLayout::make_operands(P, Q, s, B, opts);
  std::vector<Tensor> grad_gamma(2 * n), grad_beta(2 * n), grad_bias(2 * (n + 1));
  Tensor grad_in[2];
  side_by_side([&](int c) {
    // X walks back from y_hat (positions n-1..0); Y from x_hat (positions 0..n-1). Each fills its own
    // halves of P and Q, starting with its output's gradient and its input.
    const Tensor grad_out = L.grad_output_rows(c, P, Q, B);
    copy_or_zero(grad_out, c == 0 ? grad_y_hat : grad_x_hat, c == 0 ? "grad_y_hat" : "grad_x_hat");
    L.input_rows(c, P, Q, B).copy_(c == 0 ? x : y);
    Tensor g = tied_mm(grad_out, weights[L.weight(c, n)], !L.transposed(c), products);
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = L.backward_position(c, step), slot = L.slot(c, k);
      const int64_t cols = s[k + 1];
      Tensor gz = L.grad_z_rows(c, k, P, Q, B);
      Tensor a_out = L.block_output_rows(c, k, P, Q, B);
      grad_gamma[slot] = at::empty({cols}, opts);
      grad_beta[slot] = at::empty({cols}, opts);
      Tensor& dbias = grad_bias[L.bias(c, k)];
      const bool has_dbias = ChannelLayout::bias_has_gradient(act_first, leak[k]);
      dbias = has_dbias ? at::empty({cols}, opts) : at::zeros({cols}, opts);
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_block_backward", [&] {
        const BlockGrads<scalar_t> grads{g.data_ptr<scalar_t>(), k == repr ? ptr_or_null<scalar_t>(extra[c]) : nullptr,
                                         k == repr ? ptr_or_null<scalar_t>(extra_pre[c]) : nullptr};
        block_backward<scalar_t>(grads, z[slot].data_ptr<scalar_t>(), B, cols,
                                 block_args<scalar_t>(gamma[slot], beta[slot], keep[k], leak[k], act_first),
                                 mean[slot].data_ptr<scalar_t>(), std[slot].data_ptr<scalar_t>(),
                                 gz.data_ptr<scalar_t>(), a_out.data_ptr<scalar_t>(),
                                 grad_gamma[slot].data_ptr<scalar_t>(), grad_beta[slot].data_ptr<scalar_t>(),
                                 has_dbias ? dbias.data_ptr<scalar_t>() : nullptr);
      });
      // The gradient at the next block (or at the channel's input) goes through the same weight.
      const bool last = step == n - 1;
      if (!last || input_grads) g = tied_mm(gz, weights[L.weight(c, k)], !L.transposed(c), products);
    }
    grad_in[c] = input_grads ? g : at::empty({0}, opts);
    grad_bias[L.bias(c, n)] = grad_out.sum(0);
  });
  // The weight gradients, shared out between the two threads by their products' sizes.
  std::vector<Tensor> grad_weights(n + 1);
  std::vector<int64_t> sizes;
  for (int64_t k = 0; k <= n; ++k) sizes.push_back(s[k] * s[k + 1]);
  const auto share = split_by_size(sizes);
  side_by_side([&](int t) {
    for (int64_t k : share[t]) {
      grad_weights[k] = tied_weight_grad(P[k], Q[k], weights[k], products);
      if (on_weight_grad) on_weight_grad(k, grad_weights[k]);
    }
  });
  return {grad_in[0], grad_in[1], grad_weights, grad_bias, grad_gamma, grad_beta};
}

namespace {

// The registered ops: masks drawn by each, no hook.
NetResult twoway_net_op(const Tensor& x, const Tensor& y, TensorList weights, TensorList bias, TensorList gamma,
                               TensorList beta, const Tensor& rng_states, at::ArrayRef<double> p, int64_t repr,
                               at::ArrayRef<double> leak, double eps, bool act_first) {
  return twoway_net_cpu(x, y, weights, bias, gamma, beta, rng_states, p, repr, leak, eps, act_first);
}

NetBackwardResult twoway_net_backward_op(
    const c10::optional<Tensor>& grad_x_hat, const c10::optional<Tensor>& grad_y_hat,
    const c10::optional<Tensor>& grad_hx, const c10::optional<Tensor>& grad_hy,
    const c10::optional<Tensor>& grad_hx_pre, const c10::optional<Tensor>& grad_hy_pre, const Tensor& x,
    const Tensor& y, TensorList weights, TensorList gamma, TensorList beta, const Tensor& rng_states,
    at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, bool act_first, TensorList z, TensorList mean,
    TensorList std, bool input_grads) {
  return twoway_net_backward_cpu(grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_pre, grad_hy_pre, x, y, weights,
                                 gamma, beta, rng_states, p, repr, leak, act_first, z, mean, std, input_grads);
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_net", &twoway_net_op);
  m.impl("twoway_net_backward", &twoway_net_backward_op);
}

}  // namespace twoway_fast
