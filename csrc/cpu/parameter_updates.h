// The optimisers' updates that the training-step ops (csrc/cpu/twoway_step.cpp) apply to a parameter in
// the pass that completes its gradient: torch.optim.SGD's and torch.optim.Adam's (AdamW's too: Adam with
// decoupled weight decay), element by element in torch's order of operations, so that the results
// differ from torch's only where its kernels fuse a product and a sum (FMA) and these do not.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <functional>
#include <type_traits>

#include "cpu/cpu_builds.h"  // run_fastest, with_flags

namespace twoway_fast {

// torch.optim.SGD's settings.
struct Sgd {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// torch.optim.Adam's settings (decoupled_weight_decay: AdamW).
struct Adam {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled_weight_decay, amsgrad, maximize;
};

// One parameter's optimiser state, as torch.optim keeps it (null where the setting has none).
template <typename T>
struct State {
  T* momentum = nullptr;      // SGD's momentum_buffer
  T* exp_avg = nullptr;       // Adam's
  T* exp_avg_sq = nullptr;    // Adam's
  T* max_exp_avg_sq = nullptr;  // Adam's with amsgrad
  double step = 0.0;          // Adam's step count, this step's included
};

// The loop of every update over n elements: grad += decay * param first (the loss's weight-decay
// gradient, LossPass::weight_grad_factor: the rounded product, then the sum, as autograd adds the loss's
// gradient to the network's), then update(p, g, i) -> the new param (none: the gradient completed only).
// Returns the sum of param^2 before the update, in double (LossPass::add_weight_squares, summed here where
// the weights are read anyway), in kLanes partial sums added in lane order (one order, so the baseline
// and AVX-512 builds give the same bits). make_update() runs inside the build that run_fastest picks and
// returns the element update with the pointers and settings it reads copied into it (locals the stores
// cannot alias, so GCC keeps them in registers and the loop vectorises).
template <typename T, typename HasDecay, typename MakeUpdate>
double update_loop(T* param, T* grad, int64_t n, T decay, HasDecay, const MakeUpdate& make_update) {
  constexpr int kLanes = 16;
  return at::parallel_reduce(0, n, 1 << 15, 0.0, [&](int64_t i0, int64_t i1, double acc) {
    double total = 0.0;
    run_fastest([&] {
      T* __restrict p_ = param;
      T* __restrict g_ = grad;
      const T dec = decay;
      const auto update = make_update();
      double lanes[kLanes] = {};
      const auto element = [&](int64_t i, double& lane) {
        const T p = p_[i];
        lane += static_cast<double>(p) * static_cast<double>(p);
        T g = g_[i];
        if constexpr (HasDecay::value) {
          const T d = dec * p;
          g = g + d;
          g_[i] = g;
        }
        if constexpr (!std::is_same_v<decltype(update), const std::nullptr_t>) p_[i] = update(p, g, i);
      };
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) element(i + l, lanes[l]);
      for (int l = 0; i + l < i1; ++l) element(i + l, lanes[l]);
      for (int l = 0; l < kLanes; ++l) total += lanes[l];
    });
    return acc + total;
  }, std::plus<double>());
}

// torch.optim.SGD's update of one element (_single_tensor_sgd).
template <typename T, typename HasWd, typename HasBuf>
auto sgd_update(const Sgd& s, const State<T>& state) {
  return [b_ = static_cast<T* __restrict>(state.momentum), lr = static_cast<T>(s.lr),
          mom = static_cast<T>(s.momentum), wd = static_cast<T>(s.weight_decay),
          undamped = static_cast<T>(1.0 - s.dampening), sign = s.maximize ? T(-1) : T(1),
          nesterov = s.nesterov](T p, T g, int64_t i) {
    T step = sign * g;
    if constexpr (HasWd::value) step = step + wd * p;
    if constexpr (HasBuf::value) {
      const T b = b_[i] * mom + undamped * step;
      b_[i] = b;
      step = nesterov ? step + mom * b : b;
    }
    return p - lr * step;
  };
}

// torch.optim.Adam's update of one element (_single_tensor_adam; state.step already counts this step).
template <typename T, typename HasWd, typename Amsgrad>
auto adam_update(const Adam& a, const State<T>& state) {
  const double bias_correction1 = 1.0 - std::pow(a.beta1, state.step);
  const double bias_correction2 = 1.0 - std::pow(a.beta2, state.step);
  const double lerp_weight = 1.0 - a.beta1;
  return [m_ = static_cast<T* __restrict>(state.exp_avg), v_ = static_cast<T* __restrict>(state.exp_avg_sq),
          vmax_ = static_cast<T* __restrict>(state.max_exp_avg_sq), sign = a.maximize ? T(-1) : T(1),
          decoupled = a.decoupled_weight_decay, shrink = static_cast<T>(1.0 - a.lr * a.weight_decay),
          wd = static_cast<T>(a.weight_decay), w = static_cast<T>(lerp_weight), low = lerp_weight < 0.5,
          w_rest = static_cast<T>(1.0 - lerp_weight), b2 = static_cast<T>(a.beta2),
          rest2 = static_cast<T>(1.0 - a.beta2), sqrt_bc2 = static_cast<T>(std::sqrt(bias_correction2)),
          eps = static_cast<T>(a.eps), neg_step = static_cast<T>(-(a.lr / bias_correction1))](T p, T g, int64_t i) {
    g = sign * g;
    if constexpr (HasWd::value) {
      if (decoupled) {
        p = p * shrink;
      } else {
        g = g + wd * p;
      }
    }
    const T m0 = m_[i];
    const T m = low ? m0 + w * (g - m0) : g - (g - m0) * w_rest;  // torch's lerp
    m_[i] = m;
    T v = v_[i] * b2;
    v = v + rest2 * g * g;
    v_[i] = v;
    if constexpr (Amsgrad::value) {
      v = vmax_[i] > v ? vmax_[i] : v;
      vmax_[i] = v;
    }
    const T denom = std::sqrt(v) / sqrt_bc2 + eps;
    return p + neg_step * (m / denom);
  };
}

// Completes param's gradient with the loss's weight decay (decay), then applies the update: SGD's with
// sgd, Adam's with adam, none with neither. Returns the sum of param^2 before the update.
template <typename T>
double complete_and_update(T* param, T* grad, int64_t n, T decay, const Sgd* sgd, const Adam* adam,
                           const State<T>& state) {
  double squares = 0.0;
  const bool has_wd = sgd != nullptr ? sgd->weight_decay != 0.0 : adam != nullptr && adam->weight_decay != 0.0;
  const bool has_state = sgd != nullptr ? state.momentum != nullptr : adam != nullptr && adam->amsgrad;
  with_flags(decay != T(0), has_wd, has_state, [&](auto has_decay, auto wd, auto stateful) {
    if (sgd != nullptr) {
      squares = update_loop(param, grad, n, decay, has_decay,
                            [&] { return sgd_update<T, decltype(wd), decltype(stateful)>(*sgd, state); });
    } else if (adam != nullptr) {
      squares = update_loop(param, grad, n, decay, has_decay,
                            [&] { return adam_update<T, decltype(wd), decltype(stateful)>(*adam, state); });
    } else {
      squares = update_loop(param, grad, n, decay, has_decay, [] { return nullptr; });
    }
  });
  return squares;
}

}  // namespace twoway_fast
