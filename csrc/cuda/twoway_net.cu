// CUDA kernel of the network-level op, same signatures and results as csrc/cpu/twoway_net.cpp, the
// same channel layout (csrc/channel_layout.h), the channels in turn. GEMMs go through ATen
// (cuBLAS, current stream); each hidden block is one kernel forward and one backward
// (csrc/cuda/block_passes.cuh). rng_states is read only inside the kernels: nothing synchronises with
// the host, so a training step can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "channel_layout.h"
#include "cuda/block_passes.cuh"
#include "op_results.h"
#include "twoway_net_checks.h"

namespace twoway_fast {
namespace {

using at::Tensor;
using at::TensorList;

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

NetResult twoway_net_cuda(const Tensor& x_in, const Tensor& y_in, TensorList weights_in, TensorList bias_in,
                              TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
                              at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, double eps,
                              bool act_first) {
  const NetShape net = check_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak);
  check_net_bias(net, bias_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The GEMMs run in the activations' dtype: under torch.autocast the wrappers
  // (twoway_fast/backends/fused.py) cast the arguments, and autocast must not recast the op's own ATen calls.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = net.n, B = net.batch;
  const ChannelLayout L{n};
  const auto x = x_in.contiguous(), y = y_in.contiguous(), rng = rng_states.contiguous();
  const auto weights = contiguous(weights_in), bias = contiguous(bias_in);
  const auto gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto opts = x.options(), stats_opts = opts.dtype(stats_dtype(x.scalar_type()));
  std::vector<Tensor> z(2 * n), mean(2 * n), std(2 * n);
  Tensor h[2], h_pre[2], out[2];
  for (int c = 0; c < 2; ++c) {  // c = 0: X channel, 1: Y channel
    Tensor a = c == 0 ? x : y;
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = L.forward_position(c, step), slot = L.slot(c, k), cols = net.s[k + 1];
      // As on the CPU: the bias only counts before a LeakyReLU (batch norm first cancels it).
      z[slot] = tied_mm(a, weights[L.weight(c, k)], L.transposed(c));
      const Tensor b = act_first ? bias[L.bias(c, k)] : Tensor();
      mean[slot] = at::empty({cols}, stats_opts);
      std[slot] = at::empty({cols}, stats_opts);
      Tensor next = at::empty({B, cols}, opts);
      Tensor pre = k == repr ? at::empty({B, cols}, opts) : Tensor();
      if (cols > 0) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "twoway_net_block_cuda", [&] {
          block_forward_kernel<scalar_t><<<block_grid(cols), block_threads(), 0, stream>>>(
              z[slot].data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b), gamma[slot].data_ptr<scalar_t>(),
              beta[slot].data_ptr<scalar_t>(), rng.data_ptr<int64_t>() + 3 * k, next.data_ptr<scalar_t>(),
              ptr_or_null<scalar_t>(pre), mean[slot].data_ptr<acc_t<scalar_t>>(),
              std[slot].data_ptr<acc_t<scalar_t>>(), B, cols, p[k], eps, leak[k], act_first);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
      if (k == repr) h[c] = next, h_pre[c] = pre;
      a = next;
    }
    out[c] = tied_mm(a, weights[L.weight(c, n)], L.transposed(c));
    out[c].add_(bias[L.bias(c, n)]);
  }
  return {out[1], out[0], h[0], h[1], h_pre[0], h_pre[1], z, mean, std};
}

NetBackwardResult twoway_net_backward_cuda(
    const c10::optional<Tensor>& grad_x_hat, const c10::optional<Tensor>& grad_y_hat,
    const c10::optional<Tensor>& grad_hx, const c10::optional<Tensor>& grad_hy,
    const c10::optional<Tensor>& grad_hx_pre, const c10::optional<Tensor>& grad_hy_pre, const Tensor& x_in,
    const Tensor& y_in, TensorList weights_in, TensorList gamma_in, TensorList beta_in, const Tensor& rng_states,
    at::ArrayRef<double> p, int64_t repr, at::ArrayRef<double> leak, bool act_first, TensorList z_in,
    TensorList mean_in, TensorList std_in, bool input_grads) {
  const NetShape net = check_net(x_in, y_in, weights_in, gamma_in, beta_in, rng_states, p, repr, leak);
  check_net_saved(net, z_in, mean_in, std_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in forward
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = net.n, B = net.batch;
  const ChannelLayout L{n};
  const auto& s = net.s;
  const auto x = x_in.contiguous(), y = y_in.contiguous(), rng = rng_states.contiguous();
  const auto weights = contiguous(weights_in), gamma = contiguous(gamma_in), beta = contiguous(beta_in);
  const auto z = contiguous(z_in), mean = contiguous(mean_in), std = contiguous(std_in);
  const auto opts = x.options();
  Tensor extra[2] = {grad_or_undefined(grad_hx, {B, s[repr + 1]}, x, "grad_hx"),
                     grad_or_undefined(grad_hy, {B, s[repr + 1]}, x, "grad_hy")};
  Tensor extra_pre[2] = {grad_or_undefined(grad_hx_pre, {B, s[repr + 1]}, x, "grad_hx_pre"),
                         grad_or_undefined(grad_hy_pre, {B, s[repr + 1]}, x, "grad_hy_pre")};
  for (int c = 0; c < 2; ++c) pair_up(extra[c], extra_pre[c]);
  std::vector<Tensor> P, Q;  // the (2B, width) operands of the weight-gradient GEMMs
  ChannelLayout::make_operands(P, Q, s, B, opts);
  std::vector<Tensor> grad_gamma(2 * n), grad_beta(2 * n), grad_bias(2 * (n + 1));
  Tensor grad_in[2];
  for (int c = 0; c < 2; ++c) {
    // X walks back from y_hat (positions n-1..0); Y from x_hat (positions 0..n-1).
    const Tensor grad_out = L.grad_output_rows(c, P, Q, B);
    copy_or_zero(grad_out, c == 0 ? grad_y_hat : grad_x_hat, c == 0 ? "grad_y_hat" : "grad_x_hat");
    L.input_rows(c, P, Q, B).copy_(c == 0 ? x : y);
    Tensor g = tied_mm(grad_out, weights[L.weight(c, n)], !L.transposed(c));
    for (int64_t step = 0; step < n; ++step) {
      const int64_t k = L.backward_position(c, step), slot = L.slot(c, k), cols = s[k + 1];
      Tensor gz = L.grad_z_rows(c, k, P, Q, B);  // contiguous row halves
      Tensor a_out = L.block_output_rows(c, k, P, Q, B);
      grad_gamma[slot] = at::empty({cols}, opts);
      grad_beta[slot] = at::empty({cols}, opts);
      Tensor& dbias = grad_bias[L.bias(c, k)];
      const bool has_dbias = ChannelLayout::bias_has_gradient(act_first, leak[k]);
      dbias = has_dbias ? at::empty({cols}, opts) : at::zeros({cols}, opts);
      const Tensor g_extra = k == repr ? extra[c] : Tensor(), g_pre = k == repr ? extra_pre[c] : Tensor();
      if (cols > 0) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "twoway_net_block_grad_cuda", [&] {
          block_backward_kernel<scalar_t><<<block_grid(cols), block_threads(), 0, stream>>>(
              g.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(g_extra), ptr_or_null<scalar_t>(g_pre),
              z[slot].data_ptr<scalar_t>(), gamma[slot].data_ptr<scalar_t>(), beta[slot].data_ptr<scalar_t>(),
              mean[slot].data_ptr<acc_t<scalar_t>>(), std[slot].data_ptr<acc_t<scalar_t>>(),
              rng.data_ptr<int64_t>() + 3 * k,
              gz.data_ptr<scalar_t>(), a_out.data_ptr<scalar_t>(), grad_gamma[slot].data_ptr<scalar_t>(),
              grad_beta[slot].data_ptr<scalar_t>(), has_dbias ? dbias.data_ptr<scalar_t>() : nullptr, B, cols,
              p[k], leak[k], act_first);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
      // The gradient at the next block (or at the channel's input) goes through the same weight.
      const bool last = step == n - 1;
      if (!last || input_grads) g = tied_mm(gz, weights[L.weight(c, k)], !L.transposed(c));
    }
    grad_in[c] = input_grads ? g : at::empty({0}, opts);
    grad_bias[L.bias(c, n)] = grad_out.sum(0);
  }
  std::vector<Tensor> grad_weights;
  for (int64_t k = 0; k <= n; ++k) grad_weights.push_back(tied_weight_grad(P[k], Q[k], weights[k]));
  return {grad_in[0], grad_in[1], grad_weights, grad_bias, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) {
  m.impl("twoway_net", &twoway_net_cuda);
  m.impl("twoway_net_backward", &twoway_net_backward_cuda);
}

}  // namespace twoway_fast
