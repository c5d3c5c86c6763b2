// The one TORCH_LIBRARY block: every op schema of twoway_fast, defined once (the C++ type of each op's
// results: csrc/op_results.h). Kernels register per dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu,
// every op's autograd in csrc/autograd.cpp, every fake kernel in twoway_fast/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A real Python module, so `import twoway_fast._C` loads the library and runs the registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(twoway_fast, m) {
  // Hidden block in training mode: batch norm (batch statistics), LeakyReLU in the preset's order
  // (act_first: LeakyReLU -> BN, else BN -> LeakyReLU), then the tied dropout drawn from rng_state
  // = int64 (seed, offset, first_row). Returns (out, batch mean, batch std = sqrt(var_biased + eps)).
  m.def("hidden_block(Tensor z, Tensor gamma, Tensor beta, Tensor rng_state, float p, float leak, "
        "float eps, bool act_first) -> (Tensor, Tensor, Tensor)");
  // Its backward: (grad_z, grad_gamma, grad_beta), the mask regenerated from rng_state.
  m.def("hidden_block_backward(Tensor grad_out, Tensor z, Tensor gamma, Tensor beta, Tensor mean, "
        "Tensor std, Tensor rng_state, float p, float leak, bool act_first) -> (Tensor, Tensor, Tensor)");
  // The hidden block with its BN statistics given (mean, std of the BN input, e.g. over the rows of
  // every process of a distributed run) instead of taken from z; its backward returns
  // (grad_z, grad_mean, grad_std, grad_gamma, grad_beta), grad_z through the normalisation only.
  m.def("hidden_block_with_stats(Tensor z, Tensor gamma, Tensor beta, Tensor mean, Tensor std, Tensor rng_state, "
        "float p, float leak, bool act_first) -> Tensor");
  m.def("hidden_block_with_stats_backward(Tensor grad_out, Tensor z, Tensor gamma, Tensor beta, Tensor mean, "
        "Tensor std, Tensor rng_state, float p, float leak, bool act_first) -> (Tensor grad_z, Tensor grad_mean, "
        "Tensor grad_std, Tensor grad_gamma, Tensor grad_beta)");
  // Retrieval ranks under dot-product similarity of the rows as given (normalise them first for
  // correlation), both directions from one GEMM per tile_rows rows of a: (ranks_a2b int64 (n),
  // ranks_b2a int64 (m)), 1-based, ties against the query. Rule and precision: csrc/retrieval_ranks.h.
  m.def("retrieval_ranks(Tensor a, Tensor b, Tensor group, int tile_rows) -> (Tensor, Tensor)");

  // Both channels of a 2-Way Net in training mode (csrc/channel_layout.h has the list layouts):
  // weights[k] is (out, in) or locally dense (M, out/M, in/M); bias = X's n + 1 layers then Y's;
  // gamma/beta = X's n positions then Y's; rng_states (n, 3) int64, one row per mirrored pair, so
  // both channels draw the same mask; p one rate per position; leak one LeakyReLU slope per position
  // (1: a linear block, as model.repr_linear makes the representation's). Returns the reconstructions,
  // the representation of each channel after and before its dropout, and per (channel, position) the
  // GEMM output z and the batch mean and std of the BN input (z excludes the bias that batch norm
  // cancels when it comes first, so mean does too).
  m.def("twoway_net(Tensor x, Tensor y, Tensor[] weights, Tensor[] bias, Tensor[] gamma, Tensor[] beta, "
        "Tensor rng_states, float[] p, int repr_layer, float[] leak, float eps, bool act_first) -> "
        "(Tensor x_hat, Tensor y_hat, Tensor hx, Tensor hy, Tensor hx_pre, Tensor hy_pre, Tensor[] z, "
        "Tensor[] mean, Tensor[] std)");
  // Its backward; each weight's gradient from both channels is one GEMM over 2B rows. grad_x and
  // grad_y are empty unless input_grads.
  m.def("twoway_net_backward(Tensor? grad_x_hat, Tensor? grad_y_hat, Tensor? grad_hx, Tensor? grad_hy, "
        "Tensor? grad_hx_pre, Tensor? grad_hy_pre, Tensor x, Tensor y, Tensor[] weights, Tensor[] gamma, "
        "Tensor[] beta, Tensor rng_states, float[] p, int repr_layer, float[] leak, bool act_first, Tensor[] z, "
        "Tensor[] mean, Tensor[] std, bool input_grads) -> (Tensor grad_x, Tensor grad_y, Tensor[] grad_weights, "
        "Tensor[] grad_bias, Tensor[] grad_gamma, Tensor[] grad_beta)");

  // One training step's gradients (CPU): the network op, the loss op (loss_options as the loss op's, with
  // the bit kBeforeDropout for the decorrelation of hx_pre/hy_pre, else of hx/hy) and both backward ops in
  // one call. Returns the loss terms, the gradients of weights, bias, gamma, beta in that order, and
  // per slot the batch mean and std as twoway_net returns them. products: the dtype the network's GEMMs
  // multiply in (None: the inputs'; torch.bfloat16: csrc/tied_gemm.h); everything else in the inputs'.
  m.def("twoway_step_gradients(Tensor x, Tensor y, Tensor[] weights, Tensor[] bias, Tensor[] gamma, "
        "Tensor[] beta, Tensor rng_states, float[] p, int repr_layer, float[] leak, float eps, bool act_first, "
        "float[] coefficients, int loss_options, float decorrelation_eps, ScalarType? products) -> "
        "(Tensor terms, Tensor[] grads, Tensor[] mean, Tensor[] std)");
  // The same, then the parameters flagged in update (one flag per parameter, in the order of grads) take
  // torch.optim.SGD's update in place (momentum_buffers: one per updated parameter, in that order, none
  // when momentum is 0; the gradients are the loss's, without SGD's weight decay).
  m.def("twoway_sgd_step(Tensor x, Tensor y, Tensor(a!)[] weights, Tensor(b!)[] bias, Tensor(c!)[] gamma, "
        "Tensor(d!)[] beta, Tensor rng_states, float[] p, int repr_layer, float[] leak, float eps, bool act_first, "
        "float[] coefficients, int loss_options, float decorrelation_eps, ScalarType? products, bool[] update, "
        "Tensor(e!)[] momentum_buffers, float lr, float momentum, float dampening, bool nesterov, "
        "float weight_decay, bool maximize) -> (Tensor terms, Tensor[] grads, Tensor[] mean, Tensor[] std)");
  // Or torch.optim.Adam's update (AdamW's with decoupled_weight_decay): its state lists hold one tensor
  // per updated parameter (max_exp_avg_sqs: none without amsgrad); each state_steps entry is counted up
  // by one before its parameter's update, as the optimiser does.
  m.def("twoway_adam_step(Tensor x, Tensor y, Tensor(a!)[] weights, Tensor(b!)[] bias, Tensor(c!)[] gamma, "
        "Tensor(d!)[] beta, Tensor rng_states, float[] p, int repr_layer, float[] leak, float eps, bool act_first, "
        "float[] coefficients, int loss_options, float decorrelation_eps, ScalarType? products, bool[] update, "
        "Tensor(e!)[] exp_avgs, "
        "Tensor(f!)[] exp_avg_sqs, Tensor(g!)[] max_exp_avg_sqs, Tensor(h!)[] state_steps, float lr, "
        "float beta1, float beta2, float epsilon, float weight_decay, bool decoupled_weight_decay, bool amsgrad, "
        "bool maximize) -> (Tensor terms, Tensor[] grads, Tensor[] mean, Tensor[] std)");

  // The 2-Way loss (docs/method.md#the-loss). hx_dec/hy_dec are the decorrelation's inputs; the terms,
  // coefficients and loss_options (the variants' bits) are described in csrc/loss_terms.h. Returns the
  // terms (the total first) and the two (k, k) matrices C whose norms give the decorrelation.
  m.def("twoway_loss(Tensor x, Tensor y, Tensor x_hat, Tensor y_hat, Tensor hx, Tensor hy, Tensor hx_dec, "
        "Tensor hy_dec, Tensor[] weights, Tensor[] gammas, float[] coefficients, int loss_options, float eps) -> "
        "(Tensor terms, Tensor cx, Tensor cy)");
  // Its backward from grad_terms, the gradient of every entry of terms.
  m.def("twoway_loss_backward(Tensor grad_terms, Tensor x, Tensor y, Tensor x_hat, Tensor y_hat, Tensor hx, "
        "Tensor hy, Tensor hx_dec, Tensor hy_dec, Tensor[] weights, Tensor[] gammas, Tensor cx, Tensor cy, "
        "float[] coefficients, int loss_options, float eps) -> (Tensor grad_x_hat, "
        "Tensor grad_y_hat, Tensor grad_hx, Tensor grad_hy, Tensor grad_hx_dec, Tensor grad_hy_dec, "
        "Tensor[] grad_weights, Tensor[] grad_gammas)");
}
