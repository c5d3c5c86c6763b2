// CPU kernels of the standalone hidden-block op (BN with batch statistics + LeakyReLU in either order
// + tied dropout), forward and backward: the per-layer passes of the network op (block_forward.h,
// block_backward.h) applied to one given pre-activation z. Its twin with the BN statistics as inputs:
// hidden_block_with_stats.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/block_backward.h"
#include "cpu/block_forward.h"
#include "cpu/dropout_multipliers.h"
#include "op_results.h"
#include "philox.h"

namespace twoway_fast {
namespace {

BlockResult hidden_block_cpu(const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
                             const at::Tensor& rng_state, double p, double leak, double eps, bool act_first) {
  check_hidden_block(z_in, gamma_in, beta_in, rng_state, p);
  // block_forward adds a bias to z in place in act_first order: give it its own copy (and a zero bias).
  const auto z = act_first ? z_in.contiguous().clone() : z_in.contiguous();
  const auto gamma = gamma_in.contiguous(), beta = beta_in.contiguous(), zero_bias = at::zeros_like(gamma);
  const auto rows = z.size(0), cols = z.size(1);
  const DropoutMask mask = mask_from(rng_state, p);
  const auto keep = keep_multipliers(mask, rows, cols, z.options());
  auto out = at::empty_like(z), mean = at::empty_like(gamma), std = at::empty_like(gamma);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hidden_block_cpu", [&] {
    block_forward<scalar_t>(z.data_ptr<scalar_t>(), zero_bias.data_ptr<scalar_t>(), rows, cols,
                            block_args<scalar_t>(gamma, beta, keep, leak, act_first), eps,
                            out.data_ptr<scalar_t>(), nullptr, mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>());
  });
  return {out, mean, std};
}

BlockResult hidden_block_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& std_in, const at::Tensor& rng_state, double p, double leak,
    bool act_first) {
  check_hidden_block_backward(grad_out_in, z_in, gamma_in, beta_in, mean_in, std_in, rng_state, p);
  const auto grad_out = grad_out_in.contiguous().to(z_in.scalar_type()), z = z_in.contiguous();
  const auto gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto mean = mean_in.contiguous(), std = std_in.contiguous();
  const auto rows = z.size(0), cols = z.size(1);
  const DropoutMask mask = mask_from(rng_state, p);
  const auto keep = keep_multipliers(mask, rows, cols, z.options());
  auto grad_z = at::empty_like(z), rebuilt = at::empty_like(z);  // the pass also rebuilds the output
  auto grad_gamma = at::empty_like(gamma), grad_beta = at::empty_like(beta), grad_bias = at::empty_like(gamma);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hidden_block_backward_cpu", [&] {
    const BlockGrads<scalar_t> grads{grad_out.data_ptr<scalar_t>(), nullptr, nullptr};
    block_backward<scalar_t>(grads, z.data_ptr<scalar_t>(), rows, cols,
                             block_args<scalar_t>(gamma, beta, keep, leak, act_first),
                             mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(), grad_z.data_ptr<scalar_t>(),
                             rebuilt.data_ptr<scalar_t>(), grad_gamma.data_ptr<scalar_t>(),
                             grad_beta.data_ptr<scalar_t>(), grad_bias.data_ptr<scalar_t>());
  });
  return {grad_z, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("hidden_block", &hidden_block_cpu);
  m.impl("hidden_block_backward", &hidden_block_backward_cpu);
}

}  // namespace twoway_fast
