// CUDA kernel of the hidden block: batch norm (batch statistics) + LeakyReLU (either order) + tied
// dropout, forward and backward, same signatures as csrc/cpu/hidden_block.cpp. One thread block owns
// 32 columns (a warp reads 32 consecutive floats of a row: coalesced) and 8 row stripes; the column
// reductions go through shared memory. The mask is regenerated from rng_state, read on the device,
// so nothing synchronises with the host and a step can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "philox.h"

namespace twoway_fast {
namespace {

constexpr int kCols = 32;
constexpr int kRowStripes = 8;

template <typename T>
struct Acc {
  using type = float;  // float accumulation for float, half and bfloat16
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename A>
__device__ __forceinline__ A leaky(A v, A leak) {
  return v > A(0) ? v : v * leak;
}

__device__ __forceinline__ bool kept(const DropoutMask& mask, int64_t row, int64_t col) {
  bool keep[4];
  mask.four(row, col >> 2, keep);
  return keep[col & 3];
}

// Sum over the block's row stripes of each thread's value, for its column; every thread gets it.
template <typename A>
__device__ __forceinline__ A column_sum(A value, A (*shared)[kCols]) {
  shared[threadIdx.y][threadIdx.x] = value;
  __syncthreads();
  A total = 0;
  for (int k = 0; k < kRowStripes; ++k) total += shared[k][threadIdx.x];
  __syncthreads();
  return total;
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ z, const T* __restrict__ gamma, const T* __restrict__ beta,
                               const int64_t* __restrict__ rng, T* __restrict__ out, T* __restrict__ mean_out,
                               T* __restrict__ std_out, int64_t rows, int64_t cols, double p, double eps,
                               float leak, bool act_first) {
  using A = typename Acc<T>::type;
  __shared__ A shared[kRowStripes][kCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool valid = c < cols;
  auto input = [&](int64_t r) {
    const A v = static_cast<A>(z[r * cols + c]);
    return act_first ? leaky(v, A(leak)) : v;
  };
  A sum = 0;
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) sum += input(r);
  const A mean = column_sum(sum, shared) / static_cast<A>(rows);
  A squares = 0;  // two passes: exact even when the mean dwarfs the spread
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      const A d = input(r) - mean;
      squares += d * d;
    }
  const A std = sqrt(column_sum(squares, shared) / static_cast<A>(rows) + static_cast<A>(eps));
  if (!valid) return;
  if (threadIdx.y == 0) {
    mean_out[c] = static_cast<T>(mean);
    std_out[c] = static_cast<T>(std);
  }
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const T scale = static_cast<T>(mask.active ? mask.scale : 1.0);
  const A g = static_cast<A>(gamma[c]), b = static_cast<A>(beta[c]), rstd = A(1) / std;
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
    A y = g * ((input(r) - mean) * rstd) + b;
    if (!act_first) y = leaky(y, A(leak));
    out[r * cols + c] = kept(mask, r, c) ? static_cast<T>(y) * scale : T(0);
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ z, const T* __restrict__ gamma,
                                const T* __restrict__ beta, const T* __restrict__ mean_in,
                                const T* __restrict__ std_in, const int64_t* __restrict__ rng,
                                T* __restrict__ grad_z, T* __restrict__ grad_gamma, T* __restrict__ grad_beta,
                                int64_t rows, int64_t cols, double p, float leak, bool act_first) {
  using A = typename Acc<T>::type;
  __shared__ A shared[kRowStripes][kCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool valid = c < cols;
  const DropoutMask mask = DropoutMask::make(rng[0], rng[1], rng[2], p);
  const A scale = static_cast<A>(static_cast<T>(mask.active ? mask.scale : 1.0));
  A g = 0, b = 0, mean = 0, rstd = 0;
  if (valid) {
    g = static_cast<A>(gamma[c]), b = static_cast<A>(beta[c]);
    mean = static_cast<A>(mean_in[c]), rstd = A(1) / static_cast<A>(std_in[c]);
  }
  auto xhat = [&](int64_t r) {
    const A v = static_cast<A>(z[r * cols + c]);
    return ((act_first ? leaky(v, A(leak)) : v) - mean) * rstd;
  };
  // Gradient at the batch-norm output (before the LeakyReLU when that comes after).
  auto grad_y = [&](int64_t r, A xh) {
    A gy = kept(mask, r, c) ? static_cast<A>(grad_out[r * cols + c]) * scale : A(0);
    if (!act_first && g * xh + b <= A(0)) gy *= A(leak);
    return gy;
  };
  A dbeta = 0, dgamma = 0;
  if (valid)
    for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
      const A xh = xhat(r);
      const A gy = grad_y(r, xh);
      dbeta += gy;
      dgamma += gy * xh;
    }
  dbeta = column_sum(dbeta, shared);
  dgamma = column_sum(dgamma, shared);
  if (!valid) return;
  if (threadIdx.y == 0) {
    grad_gamma[c] = static_cast<T>(dgamma);
    grad_beta[c] = static_cast<T>(dbeta);
  }
  const A n = static_cast<A>(rows);
  for (int64_t r = threadIdx.y; r < rows; r += kRowStripes) {
    const A xh = xhat(r);
    A gu = g * rstd * (grad_y(r, xh) - dbeta / n - xh * dgamma / n);
    if (act_first && static_cast<A>(z[r * cols + c]) <= A(0)) gu *= A(leak);
    grad_z[r * cols + c] = static_cast<T>(gu);
  }
}

dim3 grid_for(int64_t cols) { return dim3(static_cast<unsigned>((cols + kCols - 1) / kCols)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> hidden_block_cuda(const at::Tensor& z_in, const at::Tensor& gamma_in,
                                                                 const at::Tensor& beta_in, const at::Tensor& rng_state,
                                                                 double p, double leak, double eps, bool act_first) {
  check_hidden_block(z_in, gamma_in, beta_in, rng_state, p);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = z_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto rng = rng_state.contiguous();
  auto out = at::empty_like(z);
  auto mean = at::empty({z.size(1)}, z.options());
  auto std = at::empty({z.size(1)}, z.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hidden_block_cuda", [&] {
    forward_kernel<scalar_t><<<grid_for(z.size(1)), dim3(kCols, kRowStripes), 0, stream>>>(
        z.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), rng.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(), z.size(0), z.size(1), p,
        eps, static_cast<float>(leak), act_first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mean, std};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hidden_block_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& std_in, const at::Tensor& rng_state, double p, double leak,
    bool act_first) {
  check_hidden_block_backward(grad_out_in, z_in, gamma_in, beta_in, mean_in, std_in, rng_state, p);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto grad_out = grad_out_in.contiguous().to(z_in.scalar_type()), z = z_in.contiguous();
  const auto gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto mean = mean_in.contiguous(), std = std_in.contiguous(), rng = rng_state.contiguous();
  auto grad_z = at::empty_like(z);
  auto grad_gamma = at::empty_like(gamma);
  auto grad_beta = at::empty_like(beta);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hidden_block_backward_cuda", [&] {
    backward_kernel<scalar_t><<<grid_for(z.size(1)), dim3(kCols, kRowStripes), 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(),
        beta.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(), rng.data_ptr<int64_t>(),
        grad_z.data_ptr<scalar_t>(), grad_gamma.data_ptr<scalar_t>(), grad_beta.data_ptr<scalar_t>(), z.size(0),
        z.size(1), p, static_cast<float>(leak), act_first);
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
