// What each op returns, as its C++ kernels and csrc/autograd.cpp spell it: one type per schema of
// csrc/twoway_fast.cpp, in the order of the schema's results.
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace twoway_fast {

using TensorVector = std::vector<at::Tensor>;

// retrieval_ranks: (ranks_a2b, ranks_b2a).
using RanksResult = std::tuple<at::Tensor, at::Tensor>;
// hidden_block, hidden_block_backward: (out, mean, std) and (grad_z, grad_gamma, grad_beta).
using BlockResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// hidden_block_with_stats_backward: (grad_z, grad_mean, grad_std, grad_gamma, grad_beta).
using BlockWithStatsBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// twoway_net: (x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std).
using NetResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, TensorVector,
                             TensorVector, TensorVector>;
// twoway_net_backward: (grad_x, grad_y, grad_weights, grad_bias, grad_gamma, grad_beta).
using NetBackwardResult = std::tuple<at::Tensor, at::Tensor, TensorVector, TensorVector, TensorVector, TensorVector>;
// twoway_loss: (terms, cx, cy).
using LossResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// twoway_loss_backward: (grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_dec, grad_hy_dec, grad_weights,
// grad_gammas).
using LossBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                      TensorVector, TensorVector>;
// twoway_step_gradients, twoway_sgd_step, twoway_adam_step: (terms, grads, mean, std).
using StepResult = std::tuple<at::Tensor, TensorVector, TensorVector, TensorVector>;

}  // namespace twoway_fast
