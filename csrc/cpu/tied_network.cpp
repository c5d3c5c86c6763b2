// CPU kernel of the network-level op: forward and backward of both channels of a 2-Way Net in
// training mode (SPEC section 1), the GEMMs through ATen and everything else in fused_block.h passes.
//
// Notation: n hidden positions, widths s[0] = dx, s[k + 1] = h_k, s[n + 1] = dy; weights[k] maps
// s[k] -> s[k + 1]. X visits positions 0..n-1 with weights[k], then weights[n]; Y visits n-1..0 with
// weights[k + 1]^T, then weights[0]^T. List layouts: gamma, beta, z, mean, std hold the X channel's
// positions 0..n-1 then the Y channel's; bias holds X's n + 1 layers (output last), then Y's.
//
// The shared weight's gradient is one GEMM over both channels' rows: dW_k = P_k^T Q_k with
//   P_k = [grad of X's z at layer k ; Y's input to weights[k]^T]   (2B, s[k + 1])
//   Q_k = [X's input to weights[k]   ; grad of Y's z using weights[k]^T]   (2B, s[k])
// and every backward pass writes its rows straight into these buffers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu/fused_block.h"
#include "cpu/tied_gemm.h"
#include "philox.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

// The network's shape, read from (and checked against) the op's arguments.
struct Net {
  int64_t n, batch, repr;
  std::vector<int64_t> s;
  bool act_first;
  double leak;
  std::vector<DropoutMask> masks;
};

void check_list_item(const Tensor& t, const Tensor& x, const char* list, size_t i) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), list, "[", i, "] must have dtype ", x.scalar_type(),
              " like x, got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), list, "[", i, "] is on ", t.device(), " but x is on ", x.device());
}

void check_vector_item(const Tensor& t, int64_t width, const Tensor& x, const char* list, size_t i) {
  check_list_item(t, x, list, i);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == width, list, "[", i, "] must have shape (", width, "), got ",
              t.sizes());
}

Net check_net(const Tensor& x, const Tensor& y, TensorList weights, TensorList gamma, TensorList beta,
              const Tensor& rng_states, at::ArrayRef<double> p, int64_t repr, double leak, bool act_first) {
  check_matrix(x, "x");
  check_matrix(y, "y");
  TORCH_CHECK(x.size(0) == y.size(0), "x and y must have the same rows (pairs), got ", x.size(0), " and ",
              y.size(0));
  TORCH_CHECK(x.size(0) >= 2, "batch statistics need at least 2 rows in training, got a batch of ", x.size(0));
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "y must have dtype ", x.scalar_type(), " like x, got ",
              y.scalar_type());
  TORCH_CHECK(y.device() == x.device(), "y is on ", y.device(), " but x is on ", x.device());
  Net net;
  net.n = static_cast<int64_t>(gamma.size()) / 2;
  TORCH_CHECK(net.n >= 1 && gamma.size() == static_cast<size_t>(2 * net.n),
              "gamma must hold one vector per hidden position and channel (an even count >= 2), got ",
              gamma.size());
  TORCH_CHECK(beta.size() == gamma.size(), "beta must hold ", gamma.size(), " vectors like gamma, got ",
              beta.size());
  TORCH_CHECK(weights.size() == static_cast<size_t>(net.n + 1), "weights must hold n + 1 = ", net.n + 1,
              " matrices for ", net.n, " hidden positions, got ", weights.size());
  TORCH_CHECK(p.size() == static_cast<size_t>(net.n), "p must hold one dropout rate per hidden position (",
              net.n, "), got ", p.size());
  TORCH_CHECK(0 <= repr && repr < net.n, "repr_layer must be in [0, ", net.n, "), got ", repr);
  TORCH_CHECK(rng_states.dim() == 2 && rng_states.size(0) == net.n && rng_states.size(1) == 3 &&
                  rng_states.scalar_type() == at::kLong,
              "rng_states must be int64 of shape (", net.n, ", 3) (seed, offset, first_row per position), got ",
              rng_states.scalar_type(), " of shape ", rng_states.sizes());
  TORCH_CHECK(rng_states.device() == x.device(), "rng_states is on ", rng_states.device(), " but x is on ",
              x.device());
  net.s.push_back(x.size(1));
  for (size_t k = 0; k < weights.size(); ++k) {
    const Tensor& w = weights[k];
    check_list_item(w, x, "weights", k);
    TORCH_CHECK(w.dim() == 2 || w.dim() == 3, "weights[", k, "] must be (out, in) or locally dense (M, out/M, ",
                "in/M), got shape ", w.sizes());
    TORCH_CHECK(weight_in(w) == net.s.back(), "weights[", k, "] must take width ", net.s.back(), ", got shape ",
                w.sizes());
    net.s.push_back(weight_out(w));
  }
  TORCH_CHECK(net.s.back() == y.size(1), "the last weight must map to y's width ", y.size(1), ", got ",
              net.s.back());
  for (int64_t k = 0; k < 2 * net.n; ++k) {
    check_vector_item(gamma[k], net.s[k % net.n + 1], x, "gamma", k);
    check_vector_item(beta[k], net.s[k % net.n + 1], x, "beta", k);
  }
  const auto states = rng_states.contiguous();
  const int64_t* st = states.data_ptr<int64_t>();
  for (int64_t k = 0; k < net.n; ++k) {
    check_dropout(p[k]);
    net.masks.push_back(DropoutMask::make(st[3 * k], st[3 * k + 1], st[3 * k + 2], p[k]));
  }
  net.batch = x.size(0);
  net.repr = repr;
  net.act_first = act_first;
  net.leak = leak;
  return net;
}

template <typename T>
BlockArgs<T> block_args(const Net& net, const Tensor& gamma, const Tensor& beta, const Tensor& keep, int64_t k) {
  return {gamma.data_ptr<T>(), beta.data_ptr<T>(), keep.defined() ? keep.data_ptr<uint8_t>() : nullptr,
          static_cast<T>(net.masks[k].scale), static_cast<T>(net.leak), net.act_first};
}

std::vector<Tensor> all_keep_flags(const Net& net, const Tensor& x) {
  std::vector<Tensor> keep;
  for (int64_t k = 0; k < net.n; ++k) keep.push_back(keep_flags(net.masks[k], net.batch, net.s[k + 1], x.device()));
  return keep;
}

std::vector<Tensor> contiguous(TensorList list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
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

// Results of the forward op, in schema order.
using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>,
                                 std::vector<Tensor>, std::vector<Tensor>>;

ForwardResult twoway_net_cpu(const Tensor& x_in, const Tensor& y_in, TensorList weights_in, TensorList bias_in,
                             TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
                             at::ArrayRef<double> p, int64_t repr, double leak, double eps, bool act_first) {
  const Net net = check_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak, act_first);
  const int64_t n = net.n, B = net.batch;
  TORCH_CHECK(bias_in.size() == static_cast<size_t>(2 * (n + 1)), "bias must hold 2 (n + 1) = ", 2 * (n + 1),
              " vectors (X's layers then Y's), got ", bias_in.size());
  for (int64_t k = 0; k <= n; ++k) {
    check_vector_item(bias_in[k], net.s[k + 1], x_in, "bias", k);
    check_vector_item(bias_in[n + 1 + k], k < n ? net.s[k + 1] : net.s[0], x_in, "bias", n + 1 + k);
  }
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const auto weights = contiguous(weights_in), bias = contiguous(bias_in);
  const auto gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto keep = all_keep_flags(net, x);
  std::vector<Tensor> z(2 * n), mean(2 * n), std(2 * n);
  Tensor h[2], h_pre[2], out[2];
  for (int c = 0; c < 2; ++c) {  // c = 0: X channel, 1: Y channel
    Tensor a = c == 0 ? x : y;
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = c == 0 ? step : n - 1 - step, slot = c * n + k;
      const Tensor& w = weights[c == 0 ? k : k + 1];
      // Batch norm right after the GEMM cancels the bias: skip it (the op's mean then excludes it).
      // Before a LeakyReLU it counts: the block's pass adds it to z.
      z[slot] = tied_mm(a, w, c == 1);
      const Tensor& b = act_first ? bias[c * (n + 1) + k] : maybe_undefined();
      const int64_t cols = net.s[k + 1];
      mean[slot] = at::empty({cols}, x.options());
      std[slot] = at::empty({cols}, x.options());
      Tensor next = at::empty({B, cols}, x.options());
      // Position repr always yields its pre-dropout value too (a copy when nothing is dropped).
      Tensor pre = k == repr ? at::empty({B, cols}, x.options()) : Tensor();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_block_forward", [&] {
        block_forward<scalar_t>(z[slot].data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b), B, cols,
                                block_args<scalar_t>(net, gamma[slot], beta[slot], keep[k], k), eps,
                                next.data_ptr<scalar_t>(), pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
                                mean[slot].data_ptr<scalar_t>(), std[slot].data_ptr<scalar_t>());
      });
      if (k == repr) h[c] = next, h_pre[c] = pre;
      a = next;
    }
    out[c] = tied_mm(a, weights[c == 0 ? n : 0], c == 1);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_output_bias", [&] {
      add_row_vector<scalar_t>(out[c].data_ptr<scalar_t>(), bias[c * (n + 1) + n].data_ptr<scalar_t>(), B,
                               out[c].size(1));
    });
  }
  return {out[1], out[0], h[0], h[1], h_pre[0], h_pre[1], z, mean, std};
}

using BackwardResult = std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                                  std::vector<Tensor>>;

// The two rows halves of a (2B, width) buffer.
Tensor top(const Tensor& t, int64_t B) { return t.narrow(0, 0, B); }
Tensor bottom(const Tensor& t, int64_t B) { return t.narrow(0, B, B); }

void copy_or_zero(Tensor dst, const c10::optional<Tensor>& src, const char* name) {
  if (!src.has_value() || !src->defined()) {
    dst.zero_();
    return;
  }
  TORCH_CHECK(src->sizes() == dst.sizes(), name, " must have shape ", dst.sizes(), ", got ", src->sizes());
  dst.copy_(*src);
}

// An optional incoming gradient as a contiguous tensor of the activations' dtype, or undefined.
Tensor grad_or_undefined(const c10::optional<Tensor>& g, at::IntArrayRef shape, const Tensor& like,
                         const char* name) {
  if (!g.has_value() || !g->defined()) return Tensor();
  TORCH_CHECK(g->sizes() == shape, name, " must have shape ", shape, ", got ", g->sizes());
  return g->contiguous().to(like.scalar_type());
}

BackwardResult twoway_net_backward_cpu(
    const c10::optional<Tensor>& grad_x_hat, const c10::optional<Tensor>& grad_y_hat,
    const c10::optional<Tensor>& grad_hx, const c10::optional<Tensor>& grad_hy,
    const c10::optional<Tensor>& grad_hx_pre, const c10::optional<Tensor>& grad_hy_pre, const Tensor& x_in,
    const Tensor& y_in, TensorList weights_in, TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
    at::ArrayRef<double> p, int64_t repr, double leak, bool act_first, TensorList z_in, TensorList mean_in,
    TensorList std_in, bool input_grads) {
  const Net net = check_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak, act_first);
  const int64_t n = net.n, B = net.batch;
  const auto& s = net.s;
  TORCH_CHECK(z_in.size() == static_cast<size_t>(2 * n) && mean_in.size() == z_in.size() &&
                  std_in.size() == z_in.size(),
              "z, mean and std must hold ", 2 * n, " tensors each (the forward's), got ", z_in.size(), ", ",
              mean_in.size(), " and ", std_in.size());
  for (int64_t k = 0; k < 2 * n; ++k) {
    const int64_t cols = s[k % n + 1];
    check_list_item(z_in[k], x_in, "z", k);
    TORCH_CHECK(z_in[k].dim() == 2 && z_in[k].size(0) == B && z_in[k].size(1) == cols, "z[", k,
                "] must have shape (", B, ", ", cols, "), got ", z_in[k].sizes());
    check_vector_item(mean_in[k], cols, x_in, "mean", k);
    check_vector_item(std_in[k], cols, x_in, "std", k);
  }
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const auto weights = contiguous(weights_in), gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto z = contiguous(z_in), mean = contiguous(mean_in), std = contiguous(std_in);
  const auto keep = all_keep_flags(net, x);
  const auto opts = x.options();
  // The loss's direct gradients at the representation: both or neither (a missing one is zero).
  Tensor extra[2] = {grad_or_undefined(grad_hx, {B, s[repr + 1]}, x, "grad_hx"),
                     grad_or_undefined(grad_hy, {B, s[repr + 1]}, x, "grad_hy")};
  Tensor extra_pre[2] = {grad_or_undefined(grad_hx_pre, {B, s[repr + 1]}, x, "grad_hx_pre"),
                         grad_or_undefined(grad_hy_pre, {B, s[repr + 1]}, x, "grad_hy_pre")};
  for (int c = 0; c < 2; ++c) {
    if (extra[c].defined() && !extra_pre[c].defined()) extra_pre[c] = at::zeros_like(extra[c]);
    if (extra_pre[c].defined() && !extra[c].defined()) extra[c] = at::zeros_like(extra_pre[c]);
  }
  std::vector<Tensor> P(n + 1), Q(n + 1);
  for (int64_t k = 0; k <= n; ++k) {
    P[k] = at::empty({2 * B, s[k + 1]}, opts);
    Q[k] = at::empty({2 * B, s[k]}, opts);
  }
  copy_or_zero(top(P[n], B), grad_y_hat, "grad_y_hat");
  bottom(P[n], B).copy_(y);
  top(Q[0], B).copy_(x);
  copy_or_zero(bottom(Q[0], B), grad_x_hat, "grad_x_hat");

  std::vector<Tensor> grad_gamma(2 * n), grad_beta(2 * n), grad_bias(2 * (n + 1));
  Tensor grad_in[2];
  for (int c = 0; c < 2; ++c) {
    // X walks back from y_hat (positions n-1..0); Y from x_hat (positions 0..n-1).
    Tensor g = c == 0 ? tied_mm(top(P[n], B), weights[n], true)
                      : tied_mm(bottom(Q[0], B), weights[0], false);
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = c == 0 ? n - 1 - step : step, slot = c * n + k;
      const int64_t cols = s[k + 1];
      Tensor gz = c == 0 ? top(P[k], B) : bottom(Q[k + 1], B);
      Tensor a_out = c == 0 ? top(Q[k + 1], B) : bottom(P[k], B);
      grad_gamma[slot] = at::empty({cols}, opts);
      grad_beta[slot] = at::empty({cols}, opts);
      Tensor& dbias = grad_bias[c * (n + 1) + k];
      dbias = act_first ? at::empty({cols}, opts) : at::zeros({cols}, opts);
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twoway_net_block_backward", [&] {
        const BlockGrads<scalar_t> grads{g.data_ptr<scalar_t>(), k == repr ? ptr_or_null<scalar_t>(extra[c]) : nullptr,
                                         k == repr ? ptr_or_null<scalar_t>(extra_pre[c]) : nullptr};
        block_backward<scalar_t>(grads, z[slot].data_ptr<scalar_t>(), B, cols,
                                 block_args<scalar_t>(net, gamma[slot], beta[slot], keep[k], k),
                                 mean[slot].data_ptr<scalar_t>(), std[slot].data_ptr<scalar_t>(),
                                 gz.data_ptr<scalar_t>(), a_out.data_ptr<scalar_t>(),
                                 grad_gamma[slot].data_ptr<scalar_t>(), grad_beta[slot].data_ptr<scalar_t>(),
                                 act_first ? dbias.data_ptr<scalar_t>() : nullptr);
      });
      // The gradient at the next block (or at the channel's input) goes through the same weight.
      const bool last = step == n - 1;
      if (!last || input_grads) g = c == 0 ? tied_mm(gz, weights[k], true) : tied_mm(gz, weights[k + 1], false);
    }
    grad_in[c] = input_grads ? g : at::empty({0}, opts);
  }
  grad_bias[n] = top(P[n], B).sum(0);
  grad_bias[2 * n + 1] = bottom(Q[0], B).sum(0);
  std::vector<Tensor> grad_weights;
  for (int64_t k = 0; k <= n; ++k) grad_weights.push_back(tied_weight_grad(P[k], Q[k], weights[k]));
  return {grad_in[0], grad_in[1], grad_weights, grad_bias, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("twoway_net", &twoway_net_cpu);
  m.impl("twoway_net_backward", &twoway_net_backward_cpu);
}

}  // namespace twoway_fast
