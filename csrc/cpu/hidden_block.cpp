// CPU kernel of the hidden block: batch norm (batch statistics) + LeakyReLU (either order) + tied
// dropout, forward and backward. Work is split into column chunks (batch statistics are per column);
// inside a chunk the loops run over rows with the chunk's contiguous columns innermost, so they
// vectorise. Statistics accumulate in double. The dropout mask is regenerated, never stored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>

#include "checks.h"
#include "philox.h"

namespace twoway_fast {
namespace {

constexpr int64_t kChunk = 64;  // columns per task; a multiple of 4 so Philox groups never straddle

template <typename T>
inline T leaky(T v, T leak) { return v > T(0) ? v : v * leak; }

DropoutMask mask_from(const at::Tensor& rng_state, double p) {
  const auto s = rng_state.contiguous();
  const int64_t* v = s.data_ptr<int64_t>();
  return DropoutMask::make(v[0], v[1], v[2], p);
}

// Calls f(row, col, multiplier) for every element of a chunk, the multiplier being 0 or the dropout
// scale in T; one Philox draw per 4 columns.
template <typename T, typename F>
inline void for_each_masked(const DropoutMask& mask, int64_t rows, int64_t c0, int64_t c1, F&& f) {
  const T scale = mask.active ? static_cast<T>(mask.scale) : T(1);
  bool keep[4];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = c0; c < c1; c += 4) {
      mask.four(r, c >> 2, keep);
      const int64_t n = std::min<int64_t>(4, c1 - c);
      for (int64_t j = 0; j < n; ++j) f(r, c + j, keep[j] ? scale : T(0));
    }
  }
}

template <typename T>
void forward_kernel(const T* z, const T* gamma, const T* beta, T* out, T* mean_out, T* std_out,
                    int64_t rows, int64_t cols, double eps, T leak, bool act_first, const DropoutMask& mask) {
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t b0, int64_t b1) {
    std::array<double, kChunk> mean, rstd;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kChunk, c1 = std::min(cols, c0 + kChunk), w = c1 - c0;
      auto input = [&](int64_t r, int64_t c) {
        const T v = z[r * cols + c];
        return act_first ? leaky(v, leak) : v;
      };
      std::array<double, kChunk> acc{};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < w; ++j) acc[j] += input(r, c0 + j);
      for (int64_t j = 0; j < w; ++j) mean[j] = acc[j] / rows, acc[j] = 0.0;
      // Two passes (mean, then squared deviations): exact even when the mean dwarfs the spread.
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < w; ++j) {
          const double d = input(r, c0 + j) - mean[j];
          acc[j] += d * d;
        }
      for (int64_t j = 0; j < w; ++j) {
        const double s = std::sqrt(acc[j] / rows + eps);
        rstd[j] = 1.0 / s;
        mean_out[c0 + j] = static_cast<T>(mean[j]);
        std_out[c0 + j] = static_cast<T>(s);
      }
      for_each_masked<T>(mask, rows, c0, c1, [&](int64_t r, int64_t c, T m) {
        const int64_t j = c - c0;
        T y = gamma[c] * static_cast<T>((input(r, c) - mean[j]) * rstd[j]) + beta[c];
        if (!act_first) y = leaky(y, leak);
        out[r * cols + c] = y * m;
      });
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_out, const T* z, const T* gamma, const T* beta, const T* mean_in,
                     const T* std_in, T* grad_z, T* grad_gamma, T* grad_beta, int64_t rows, int64_t cols,
                     T leak, bool act_first, const DropoutMask& mask) {
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kChunk, c1 = std::min(cols, c0 + kChunk), w = c1 - c0;
      std::array<T, kChunk> rstd;
      for (int64_t j = 0; j < w; ++j) rstd[j] = T(1) / std_in[c0 + j];
      auto xhat = [&](int64_t r, int64_t c) {
        const T v = z[r * cols + c];
        return ((act_first ? leaky(v, leak) : v) - mean_in[c]) * rstd[c - c0];
      };
      // Gradient at the batch-norm output (before LeakyReLU when that comes after).
      auto grad_y = [&](int64_t r, int64_t c, T m, T xh) {
        T g = grad_out[r * cols + c] * m;
        if (!act_first && gamma[c] * xh + beta[c] <= T(0)) g *= leak;
        return g;
      };
      std::array<double, kChunk> dgamma{}, dbeta{};
      for_each_masked<T>(mask, rows, c0, c1, [&](int64_t r, int64_t c, T m) {
        const T xh = xhat(r, c);
        const T g = grad_y(r, c, m, xh);
        dbeta[c - c0] += g;
        dgamma[c - c0] += static_cast<double>(g) * xh;
      });
      for (int64_t j = 0; j < w; ++j) {
        grad_gamma[c0 + j] = static_cast<T>(dgamma[j]);
        grad_beta[c0 + j] = static_cast<T>(dbeta[j]);
      }
      for_each_masked<T>(mask, rows, c0, c1, [&](int64_t r, int64_t c, T m) {
        const int64_t j = c - c0;
        const T xh = xhat(r, c);
        const T g = grad_y(r, c, m, xh);
        T gu = gamma[c] * rstd[j] *
               static_cast<T>(g - dbeta[j] / rows - static_cast<double>(xh) * dgamma[j] / rows);
        if (act_first && z[r * cols + c] <= T(0)) gu *= leak;
        grad_z[r * cols + c] = gu;
      });
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hidden_block_cpu(const at::Tensor& z_in, const at::Tensor& gamma_in,
                                                                const at::Tensor& beta_in, const at::Tensor& rng_state,
                                                                double p, double leak, double eps, bool act_first) {
  check_hidden_block(z_in, gamma_in, beta_in, rng_state, p);
  const auto z = z_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const DropoutMask mask = mask_from(rng_state, p);
  auto out = at::empty_like(z);
  auto mean = at::empty({z.size(1)}, z.options());
  auto std = at::empty({z.size(1)}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hidden_block_cpu", [&] {
    forward_kernel<scalar_t>(z.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(),
                             z.size(0), z.size(1), eps, static_cast<scalar_t>(leak), act_first, mask);
  });
  return {out, mean, std};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hidden_block_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& z_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& std_in, const at::Tensor& rng_state, double p, double leak,
    bool act_first) {
  check_hidden_block_backward(grad_out_in, z_in, gamma_in, beta_in, mean_in, std_in, rng_state, p);
  const auto grad_out = grad_out_in.contiguous().to(z_in.scalar_type()), z = z_in.contiguous();
  const auto gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const auto mean = mean_in.contiguous(), std = std_in.contiguous();
  const DropoutMask mask = mask_from(rng_state, p);
  auto grad_z = at::empty_like(z);
  auto grad_gamma = at::empty_like(gamma);
  auto grad_beta = at::empty_like(beta);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hidden_block_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(),
                              beta.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(),
                              grad_z.data_ptr<scalar_t>(), grad_gamma.data_ptr<scalar_t>(),
                              grad_beta.data_ptr<scalar_t>(), z.size(0), z.size(1), static_cast<scalar_t>(leak),
                              act_first, mask);
  });
  return {grad_z, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(twoway_fast, CPU, m) {
  m.impl("hidden_block", &hidden_block_cpu);
  m.impl("hidden_block_backward", &hidden_block_backward_cpu);
}

}  // namespace twoway_fast
