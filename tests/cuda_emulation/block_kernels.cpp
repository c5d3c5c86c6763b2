// The CUDA block kernels (csrc/cuda/block_passes.cuh) under the host emulation, and the CPU passes
// (csrc/cpu/block_forward.h, block_backward.h) on the same arguments, for tests/test_cuda_emulation.py.
#include <torch/extension.h>

#include "cuda_emulation.h"  // first: it defines what the kernels' CUDA keywords mean here

#include "checks.h"
#include "cpu/block_backward.h"
#include "cpu/block_forward.h"
#include "cpu/dropout_multipliers.h"
#include "cuda/block_passes.cuh"

namespace {

using at::Tensor;
using twoway_fast::acc_t;

template <typename T>
T* or_null(const Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// (z after the bias add, out, pre or empty, mean, std), from the emulated kernel.
std::vector<Tensor> cuda_forward(Tensor z, const Tensor& bias, const Tensor& gamma, const Tensor& beta,
                                 const Tensor& rng, double p, double eps, double leak, bool act_first, bool want_pre) {
  z = z.clone();
  const int64_t rows = z.size(0), cols = z.size(1);
  auto out = at::empty_like(z), pre = want_pre ? at::empty_like(z) : at::empty({0}, z.options());
  auto mean = at::empty({cols}, z.options().dtype(twoway_fast::stats_dtype(z.scalar_type())));
  auto sd = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "cuda_forward", [&] {
    emulate_launch(twoway_fast::block_grid(cols), twoway_fast::block_threads(), [&] {
      twoway_fast::block_forward_kernel<scalar_t>(
          z.data_ptr<scalar_t>(), or_null<scalar_t>(bias), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
          rng.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), or_null<scalar_t>(pre),
          mean.data_ptr<acc_t<scalar_t>>(), sd.data_ptr<acc_t<scalar_t>>(), rows, cols, p, eps, leak, act_first);
    });
  });
  return {z, out, pre, mean, sd};
}

// (grad_z, rebuilt output, dgamma, dbeta, dbias), from the emulated kernel.
std::vector<Tensor> cuda_backward(const Tensor& g_out, const Tensor& g_extra, const Tensor& g_pre, const Tensor& z,
                                  const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& sd,
                                  const Tensor& rng, double p, double leak, bool act_first) {
  const int64_t rows = z.size(0), cols = z.size(1);
  auto grad_z = at::empty_like(z), a_out = at::empty_like(z);
  auto dgamma = at::empty_like(gamma), dbeta = at::empty_like(gamma), dbias = at::zeros_like(gamma);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "cuda_backward", [&] {
    emulate_launch(twoway_fast::block_grid(cols), twoway_fast::block_threads(), [&] {
      twoway_fast::block_backward_kernel<scalar_t>(
          g_out.data_ptr<scalar_t>(), or_null<scalar_t>(g_extra), or_null<scalar_t>(g_pre), z.data_ptr<scalar_t>(),
          gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), mean.data_ptr<acc_t<scalar_t>>(),
          sd.data_ptr<acc_t<scalar_t>>(), rng.data_ptr<int64_t>(), grad_z.data_ptr<scalar_t>(),
          a_out.data_ptr<scalar_t>(), dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(),
          dbias.data_ptr<scalar_t>(), rows, cols, p, leak, act_first);
    });
  });
  return {grad_z, a_out, dgamma, dbeta, dbias};
}

twoway_fast::DropoutMask mask_of(const Tensor& rng, double p) {
  const int64_t* r = rng.data_ptr<int64_t>();
  return twoway_fast::DropoutMask::make(r[0], r[1], r[2], p);
}

std::vector<Tensor> cpu_forward(Tensor z, Tensor bias, const Tensor& gamma, const Tensor& beta, const Tensor& rng,
                                double p, double eps, double leak, bool act_first, bool want_pre) {
  z = z.clone();
  if (bias.numel() == 0) bias = at::zeros_like(gamma);  // the CPU pass reads a bias in act_first order
  const int64_t rows = z.size(0), cols = z.size(1);
  auto out = at::empty_like(z), pre = want_pre ? at::empty_like(z) : at::empty({0}, z.options());
  auto mean = at::empty_like(gamma), sd = at::empty_like(gamma);
  const auto mask = mask_of(rng, p);
  const auto keep = twoway_fast::keep_multipliers(mask, rows, cols, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cpu_forward", [&] {
    twoway_fast::block_forward<scalar_t>(z.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), rows, cols,
                                         twoway_fast::block_args<scalar_t>(gamma, beta, keep, leak, act_first), eps,
                                         out.data_ptr<scalar_t>(), or_null<scalar_t>(pre), mean.data_ptr<scalar_t>(),
                                         sd.data_ptr<scalar_t>());
  });
  return {z, out, pre, mean, sd};
}

std::vector<Tensor> cpu_backward(const Tensor& g_out, const Tensor& g_extra, const Tensor& g_pre, const Tensor& z,
                                 const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& sd,
                                 const Tensor& rng, double p, double leak, bool act_first) {
  const int64_t rows = z.size(0), cols = z.size(1);
  auto grad_z = at::empty_like(z), a_out = at::empty_like(z);
  auto dgamma = at::empty_like(gamma), dbeta = at::empty_like(gamma), dbias = at::zeros_like(gamma);
  const auto mask = mask_of(rng, p);
  const auto keep = twoway_fast::keep_multipliers(mask, rows, cols, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cpu_backward", [&] {
    const twoway_fast::BlockGrads<scalar_t> grads{g_out.data_ptr<scalar_t>(), or_null<scalar_t>(g_extra),
                                                  or_null<scalar_t>(g_pre)};
    twoway_fast::block_backward<scalar_t>(grads, z.data_ptr<scalar_t>(), rows, cols,
                                          twoway_fast::block_args<scalar_t>(gamma, beta, keep, leak, act_first),
                                          mean.data_ptr<scalar_t>(), sd.data_ptr<scalar_t>(),
                                          grad_z.data_ptr<scalar_t>(), a_out.data_ptr<scalar_t>(),
                                          dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(),
                                          dbias.data_ptr<scalar_t>());
  });
  return {grad_z, a_out, dgamma, dbeta, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_forward", &cuda_forward);
  m.def("cuda_backward", &cuda_backward);
  m.def("cpu_forward", &cpu_forward);
  m.def("cpu_backward", &cpu_backward);
}
