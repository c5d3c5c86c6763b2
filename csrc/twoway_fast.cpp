// The one TORCH_LIBRARY block: every op schema of twoway_fast, defined once. Kernels register per
// dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu; autograd and fake kernels in twoway_fast/ops.py.
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
  // Retrieval ranks under dot-product similarity of the rows as given (normalise them first for
  // correlation), both directions from one GEMM per tile_rows rows of a: (ranks_a2b int64 (n),
  // ranks_b2a int64 (m)), 1-based, ties against the query. Rule and precision: csrc/retrieval_ranks.h.
  m.def("retrieval_ranks(Tensor a, Tensor b, Tensor group, int tile_rows) -> (Tensor, Tensor)");
}
