// What the passes of one hidden block (block_forward.h, block_backward.h) take: its parameters and mask
// (BlockArgs), the gradients that reach it (BlockGrads), and the LeakyReLU they apply.
#pragma once
#include <ATen/ATen.h>

namespace twoway_fast {

// One hidden block's parameters and mask, as raw pointers for the passes.
template <typename T>
struct BlockArgs {
  const T* gamma;
  const T* beta;
  const T* keep;  // the mask's multipliers (keep_multipliers); nullptr: no dropout
  T leak;
  bool act_first;  // LeakyReLU -> BN (else BN -> LeakyReLU)
};

// A block's BlockArgs from its tensors (keep: keep_multipliers' tensor, undefined without dropout).
template <typename T>
BlockArgs<T> block_args(const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& keep, double leak,
                        bool act_first) {
  return {gamma.data_ptr<T>(), beta.data_ptr<T>(), keep.defined() ? keep.data_ptr<T>() : nullptr,
          static_cast<T>(leak), act_first};
}

// LeakyReLU when `on` (a compile-time constant at every use), as a multiply by a selected factor:
// a branch around the multiply would keep the loops from vectorising.
template <typename T>
inline T leaky_slope(T v, T leak) { return v > T(0) ? T(1) : leak; }

template <typename T>
inline T leaky_if(bool on, T v, T leak) { return on ? v * leaky_slope(v, leak) : v; }

// Gradients that reach one hidden block: g_out at its output (after dropout); at the representation
// position also g_extra (after dropout) and g_pre (before it), the loss's direct terms; both nullptr
// elsewhere, both set there.
template <typename T>
struct BlockGrads {
  const T* g_out;
  const T* g_extra;
  const T* g_pre;
};

}  // namespace twoway_fast
