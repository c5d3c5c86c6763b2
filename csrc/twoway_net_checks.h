// Argument checks and preparation shared by the CPU and CUDA network ops (csrc/channel_layout.h has
// the list layouts). Nothing here reads tensor data on the host: rng_states stays on its device,
// so the CUDA op never synchronises.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <utility>
#include <vector>

#include "checks.h"
#include "tied_gemm.h"

namespace twoway_fast {

// The network's shape, read from (and checked against) the op's arguments.
struct NetShape {
  int64_t n, batch, repr;
  std::vector<int64_t> s;  // widths: s[0] = dx, s[k + 1] = h_k, s[n + 1] = dy
};

inline void check_list_item(const at::Tensor& t, const at::Tensor& x, const char* list, size_t i) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), list, "[", i, "] must have dtype ", x.scalar_type(),
              " like x, got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), list, "[", i, "] is on ", t.device(), " but x is on ", x.device());
}

inline void check_vector_item(const at::Tensor& t, int64_t width, const at::Tensor& x, const char* list, size_t i) {
  check_list_item(t, x, list, i);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == width, list, "[", i, "] must have shape (", width, "), got ",
              t.sizes());
}

inline NetShape check_net(const at::Tensor& x, const at::Tensor& y, at::TensorList weights, at::TensorList gamma,
                          at::TensorList beta, const at::Tensor& rng_states, at::ArrayRef<double> p, int64_t repr,
                          at::ArrayRef<double> leak) {
  check_matrix(x, "x");
  check_matrix(y, "y");
  TORCH_CHECK(x.size(0) == y.size(0), "x and y must have the same rows (pairs), got ", x.size(0), " and ",
              y.size(0));
  TORCH_CHECK(x.size(0) >= 2, "batch statistics need at least 2 rows in training, got a batch of ", x.size(0));
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "y must have dtype ", x.scalar_type(), " like x, got ",
              y.scalar_type());
  TORCH_CHECK(y.device() == x.device(), "y is on ", y.device(), " but x is on ", x.device());
  NetShape net;
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
  for (double rate : p) check_dropout(rate);
  TORCH_CHECK(leak.size() == static_cast<size_t>(net.n), "leak must hold one LeakyReLU slope per hidden position (",
              net.n, "), got ", leak.size());
  for (double slope : leak) TORCH_CHECK(std::isfinite(slope), "leak must hold finite slopes, got ", slope);
  TORCH_CHECK(0 <= repr && repr < net.n, "repr_layer must be in [0, ", net.n, "), got ", repr);
  TORCH_CHECK(rng_states.dim() == 2 && rng_states.size(0) == net.n && rng_states.size(1) == 3 &&
                  rng_states.scalar_type() == at::kLong,
              "rng_states must be int64 of shape (", net.n, ", 3) (seed, offset, first_row per position), got ",
              rng_states.scalar_type(), " of shape ", rng_states.sizes());
  TORCH_CHECK(rng_states.device() == x.device(), "rng_states is on ", rng_states.device(), " but x is on ",
              x.device());
  net.s.push_back(x.size(1));
  for (size_t k = 0; k < weights.size(); ++k) {
    const at::Tensor& w = weights[k];
    check_list_item(w, x, "weights", k);
    TORCH_CHECK(w.dim() == 2 || w.dim() == 3, "weights[", k, "] must be (out, in) or locally dense (M, out/M, ",
                "in/M), got shape ", w.sizes());
    TORCH_CHECK(weight_in(w) == net.s.back(), "weights[", k, "] must take width ", net.s.back(), ", got shape ",
                w.sizes());
    TORCH_CHECK(weight_out(w) > 0, "weights[", k, "] must give at least one column, got shape ", w.sizes());
    net.s.push_back(weight_out(w));
  }
  TORCH_CHECK(net.s.back() == y.size(1), "the last weight must map to y's width ", y.size(1), ", got ",
              net.s.back());
  for (int64_t k = 0; k < 2 * net.n; ++k) {
    check_vector_item(gamma[k], net.s[k % net.n + 1], x, "gamma", k);
    check_vector_item(beta[k], net.s[k % net.n + 1], x, "beta", k);
  }
  net.batch = x.size(0);
  net.repr = repr;
  return net;
}

// The forward op's bias list: X's n + 1 layers (output last), then Y's.
inline void check_net_bias(const NetShape& net, at::TensorList bias, const at::Tensor& x) {
  const int64_t n = net.n;
  TORCH_CHECK(bias.size() == static_cast<size_t>(2 * (n + 1)), "bias must hold 2 (n + 1) = ", 2 * (n + 1),
              " vectors (X's layers then Y's), got ", bias.size());
  for (int64_t k = 0; k <= n; ++k) {
    check_vector_item(bias[k], net.s[k + 1], x, "bias", k);
    check_vector_item(bias[n + 1 + k], k < n ? net.s[k + 1] : net.s[0], x, "bias", n + 1 + k);
  }
}

// The backward op's saved forward results: z, mean and std per (channel, position).
inline void check_net_saved(const NetShape& net, at::TensorList z, at::TensorList mean, at::TensorList std,
                            const at::Tensor& x) {
  const int64_t n = net.n;
  TORCH_CHECK(z.size() == static_cast<size_t>(2 * n) && mean.size() == z.size() && std.size() == z.size(),
              "z, mean and std must hold ", 2 * n, " tensors each (the forward's), got ", z.size(), ", ",
              mean.size(), " and ", std.size());
  for (int64_t k = 0; k < 2 * n; ++k) {
    const int64_t cols = net.s[k % n + 1];
    check_list_item(z[k], x, "z", k);
    TORCH_CHECK(z[k].dim() == 2 && z[k].size(0) == net.batch && z[k].size(1) == cols, "z[", k,
                "] must have shape (", net.batch, ", ", cols, "), got ", z[k].sizes());
    for (const auto& [stats, name] : {std::pair{mean[k], "mean"}, std::pair{std[k], "std"}}) {
      TORCH_CHECK(stats.scalar_type() == stats_dtype(x.scalar_type()), name, "[", k, "] must have dtype ",
                  stats_dtype(x.scalar_type()), " (the forward's statistics for ", x.scalar_type(), " x), got ",
                  stats.scalar_type());
      TORCH_CHECK(stats.device() == x.device(), name, "[", k, "] is on ", stats.device(), " but x is on ",
                  x.device());
      TORCH_CHECK(stats.dim() == 1 && stats.size(0) == cols, name, "[", k, "] must have shape (", cols, "), got ",
                  stats.sizes());
    }
  }
}

inline std::vector<at::Tensor> contiguous(at::TensorList list) {
  std::vector<at::Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

inline void copy_or_zero(at::Tensor dst, const c10::optional<at::Tensor>& src, const char* name) {
  if (!src.has_value() || !src->defined()) {
    dst.zero_();
    return;
  }
  TORCH_CHECK(src->sizes() == dst.sizes(), name, " must have shape ", dst.sizes(), ", got ", src->sizes());
  dst.copy_(*src);
}

// An optional incoming gradient as a contiguous tensor of the activations' dtype, or undefined.
inline at::Tensor grad_or_undefined(const c10::optional<at::Tensor>& g, at::IntArrayRef shape,
                                    const at::Tensor& like, const char* name) {
  if (!g.has_value() || !g->defined()) return at::Tensor();
  TORCH_CHECK(g->sizes() == shape, name, " must have shape ", shape, ", got ", g->sizes());
  TORCH_CHECK(g->device() == like.device(), name, " is on ", g->device(), " but x is on ", like.device());
  return g->contiguous().to(like.scalar_type());
}

// The representation's direct gradients of one channel (after and before its dropout): both or
// neither, a missing one zero.
inline void pair_up(at::Tensor& extra, at::Tensor& extra_pre) {
  if (extra.defined() && !extra_pre.defined()) extra_pre = at::zeros_like(extra);
  if (extra_pre.defined() && !extra.defined()) extra = at::zeros_like(extra_pre);
}

}  // namespace twoway_fast
