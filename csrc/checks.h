// Input checks shared by the kernels: every message says what was expected and what came.
#pragma once
#include <ATen/ATen.h>

namespace twoway_fast {

// The dtype of the batch statistics (mean, std) the network op returns and its backward takes (and
// the CUDA kernels' accumulation type): float for half and bfloat16 activations, so backward
// normalises exactly as forward did; else the activations' own.
inline at::ScalarType stats_dtype(at::ScalarType activations) {
  return activations == at::kHalf || activations == at::kBFloat16 ? at::kFloat : activations;
}

// Zero widths are refused here, before any pass divides by a column count.
inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D (batch, width) tensor, got shape ", t.sizes());
  TORCH_CHECK(t.size(1) > 0, name, " must have at least one column, got shape ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but ", like_name, " is on ", like.device());
}

inline void check_vector(const at::Tensor& t, const char* name, int64_t width, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == width, name, " must have shape (", width, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(),
              " like the activations, got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the activations are on ",
              like.device());
}

inline void check_rng_state(const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == 3 && t.scalar_type() == at::kLong,
              "rng_state must be an int64 tensor (seed, offset, first_row), got ", t.scalar_type(),
              " of shape ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), "rng_state is on ", t.device(), " but the activations are on ",
              like.device());
}

inline void check_dropout(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
}

inline void check_hidden_block(const at::Tensor& z, const at::Tensor& gamma, const at::Tensor& beta,
                               const at::Tensor& rng_state, double p) {
  check_matrix(z, "z");
  TORCH_CHECK(z.size(0) >= 2, "batch statistics need at least 2 rows in training, got a batch of ", z.size(0));
  check_vector(gamma, "gamma", z.size(1), z);
  check_vector(beta, "beta", z.size(1), z);
  check_rng_state(rng_state, z);
  check_dropout(p);
}

inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& z) {
  TORCH_CHECK(grad_out.sizes() == z.sizes(), "grad_out must have the shape of z ", z.sizes(), ", got ",
              grad_out.sizes());
  check_same_device(grad_out, "grad_out", z, "z");
}

inline void check_hidden_block_backward(const at::Tensor& grad_out, const at::Tensor& z, const at::Tensor& gamma,
                                        const at::Tensor& beta, const at::Tensor& mean, const at::Tensor& std,
                                        const at::Tensor& rng_state, double p) {
  check_hidden_block(z, gamma, beta, rng_state, p);
  check_grad_out(grad_out, z);
  check_vector(mean, "mean", z.size(1), z);
  check_vector(std, "std", z.size(1), z);
}

inline void check_hidden_block_with_stats(const at::Tensor& z, const at::Tensor& gamma, const at::Tensor& beta,
                                          const at::Tensor& mean, const at::Tensor& std, const at::Tensor& rng_state,
                                          double p) {
  check_matrix(z, "z");  // one row is enough: the statistics come from outside
  check_vector(gamma, "gamma", z.size(1), z);
  check_vector(beta, "beta", z.size(1), z);
  check_vector(mean, "mean", z.size(1), z);
  check_vector(std, "std", z.size(1), z);
  check_rng_state(rng_state, z);
  check_dropout(p);
}

}  // namespace twoway_fast
