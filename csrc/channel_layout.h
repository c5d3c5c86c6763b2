// The channel layout of the network op, written once for its CPU and CUDA walks (csrc/cpu/twoway_net.cpp,
// csrc/cuda/twoway_net.cu; docs/method.md#the-network).
//
// n hidden positions, widths s[0] = dx, s[k + 1] = h_k, s[n + 1] = dy; weights[k] maps s[k] -> s[k + 1].
// X (c = 0) visits positions 0..n-1 with weights[k], then weights[n]; Y (c = 1) visits n-1..0 with
// weights[k + 1]^T, then weights[0]^T. List layouts: gamma, beta, z, mean, std hold X's positions 0..n-1,
// then Y's; bias holds X's n + 1 layers (output last), then Y's.
//
// The shared weight's gradient is one GEMM over both channels' rows: dW_k = P_k^T Q_k with
//   P_k = [grad of X's z at layer k ; Y's input to weights[k]^T]   (2B, s[k + 1])
//   Q_k = [X's input to weights[k]   ; grad of Y's z using weights[k]^T]   (2B, s[k])
// and every backward pass writes its rows straight into these buffers.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace twoway_fast {

struct ChannelLayout {
  int64_t n;

  // The position of channel c's step-th block, forward and backward (the backward walks back).
  int64_t forward_position(int c, int64_t step) const { return c == 0 ? step : n - 1 - step; }
  int64_t backward_position(int c, int64_t step) const { return forward_position(c, n - 1 - step); }
  // Index of (channel, position) in gamma, beta, z, mean, std.
  int64_t slot(int c, int64_t k) const { return c * n + k; }
  // The weight in front of channel c's position k (k = n: its output layer), and its bias.
  int64_t weight(int c, int64_t k) const { return k == n ? (c == 0 ? n : 0) : (c == 0 ? k : k + 1); }
  int64_t bias(int c, int64_t k) const { return c * (n + 1) + k; }
  // Y applies the weights transposed (and X's backward does, through them).
  static bool transposed(int c) { return c == 1; }
  // Whether a hidden position's bias has a gradient: only where an activation with a bend lies between it
  // and the batch norm (act_first, slope not 1). Otherwise the norm's mean cancels it exactly, and its
  // gradient is exactly 0 (a sum computed would be rounding noise, which Adam scales up to full steps).
  static bool bias_has_gradient(bool act_first, double leak) { return act_first && leak != 1.0; }

  // The weight-gradient operands, P[k] (2B, s[k + 1]) and Q[k] (2B, s[k]) for k = 0..n.
  static void make_operands(std::vector<at::Tensor>& P, std::vector<at::Tensor>& Q, const std::vector<int64_t>& s,
                            int64_t B, const at::TensorOptions& opts) {
    const auto layers = s.size() - 1;
    P.resize(layers), Q.resize(layers);
    for (size_t k = 0; k < layers; ++k) {
      P[k] = at::empty({2 * B, s[k + 1]}, opts);
      Q[k] = at::empty({2 * B, s[k]}, opts);
    }
  }
  // Channel c's rows of the operands (the top half X's, the bottom half Y's): the gradient at position k's
  // GEMM output z, the block's output at position k, and for the output layer the gradient of the
  // channel's output and the channel's input.
  static at::Tensor rows(const at::Tensor& t, int c, int64_t B) { return t.narrow(0, c * B, B); }
  at::Tensor grad_z_rows(int c, int64_t k, const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& Q,
                         int64_t B) const {
    return c == 0 ? rows(P[k], 0, B) : rows(Q[k + 1], 1, B);
  }
  at::Tensor block_output_rows(int c, int64_t k, const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& Q,
                               int64_t B) const {
    return c == 0 ? rows(Q[k + 1], 0, B) : rows(P[k], 1, B);
  }
  at::Tensor grad_output_rows(int c, const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& Q,
                              int64_t B) const {
    return c == 0 ? rows(P[n], 0, B) : rows(Q[0], 1, B);
  }
  at::Tensor input_rows(int c, const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& Q, int64_t B) const {
    return c == 0 ? rows(Q[0], 0, B) : rows(P[n], 1, B);
  }
};

}  // namespace twoway_fast
