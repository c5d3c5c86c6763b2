// CUDA kernel of the standalone hidden block (batch norm with batch statistics + LeakyReLU in either
// order + tied dropout), forward and backward, same signatures as csrc/cpu/hidden_block.cpp: the
// per-layer passes of the network op (csrc/cuda/block_passes.cuh) applied to one given pre-activation z.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/block_passes.cuh"
#include "op_results.h"

namespace twoway_fast {
namespace {

BlockResult hidden_block_cuda(const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
                              const at::Tensor& rng_state, double p, double leak, double eps, bool act_first) {
  check_hidden_block(z_in, gamma_in, beta_in, rng_state, p);
  const c10::cuda::CUDAGuard guard(z_in.device());
  // No bias here, so the forward pass never writes z (it may be the caller's tensor).
  const auto z = z_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto rng = rng_state.contiguous();
  auto out = at::empty_like(z);
  // The kernel's statistics are in acc_t (float for half and bfloat16); the op returns z's dtype.
  const auto stats_opts = z.options().dtype(stats_dtype(z.scalar_type()));
  auto mean = at::empty({z.size(1)}, stats_opts);
  auto std = at::empty({z.size(1)}, stats_opts);
  if (z.size(1) > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hidden_block_cuda", [&] {
      block_forward_kernel<scalar_t><<<block_grid(z.size(1)), block_threads(), 0,
                                       c10::cuda::getCurrentCUDAStream()>>>(
          z.data_ptr<scalar_t>(), nullptr, gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
          rng.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), nullptr, mean.data_ptr<acc_t<scalar_t>>(),
          std.data_ptr<acc_t<scalar_t>>(), z.size(0), z.size(1), p, eps, leak, act_first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, mean.to(z.scalar_type()), std.to(z.scalar_type())};
}

BlockResult hidden_block_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& std_in, const at::Tensor& rng_state, double p, double leak,
    bool act_first) {
  check_hidden_block_backward(grad_out_in, z_in, gamma_in, beta_in, mean_in, std_in, rng_state, p);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto grad_out = grad_out_in.contiguous().to(z_in.scalar_type()), z = z_in.contiguous();
  const auto gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto mean = mean_in.to(stats_dtype(z.scalar_type())).contiguous();
  const auto std = std_in.to(stats_dtype(z.scalar_type())).contiguous(), rng = rng_state.contiguous();
  auto grad_z = at::empty_like(z);
  auto grad_gamma = at::empty_like(gamma);
  auto grad_beta = at::empty_like(beta);
  if (z.size(1) == 0) return {grad_z, grad_gamma, grad_beta};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hidden_block_backward_cuda", [&] {
    block_backward_kernel<scalar_t><<<block_grid(z.size(1)), block_threads(), 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), nullptr, nullptr, z.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(),
        beta.data_ptr<scalar_t>(), mean.data_ptr<acc_t<scalar_t>>(), std.data_ptr<acc_t<scalar_t>>(),
        rng.data_ptr<int64_t>(),
        grad_z.data_ptr<scalar_t>(), nullptr, grad_gamma.data_ptr<scalar_t>(), grad_beta.data_ptr<scalar_t>(),
        nullptr, z.size(0), z.size(1), p, leak, act_first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_z, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CUDA, m) {
  m.impl("hidden_block", &hidden_block_cuda);
  m.impl("hidden_block_backward", &hidden_block_backward_cuda);
}

}  // namespace twoway_fast
