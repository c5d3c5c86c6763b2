// The GEMM floor of the training step run the way the network op runs its products on two threads
// (csrc/cpu/side_by_side.h): the X channel's products on one thread and the Y
// channel's on the other, each single-threaded inside the region, then the weight gradients shared out
// by size. Built by benchmarks/training_step.py (torch.utils.cpp_extension.load) for the provider
// "gemm_floor_side_by_side": the floor of a step that schedules its products like the op does.
#include <torch/extension.h>

#include <vector>

#include "cpu/side_by_side.h"  // the op's own scheduling

namespace {

using at::Tensor;
using twoway_fast::side_by_side;

// acts[c][k] (B, s[k]) and grads[c][k] per channel c; p[k] (2B, s[k + 1]), q[k] (2B, s[k]);
// h[c], cov[c], dh[c]: each channel's decorrelation.
void step(const Tensor& x, const Tensor& y, const std::vector<Tensor>& weights, std::vector<std::vector<Tensor>> acts,
          std::vector<std::vector<Tensor>> grads, const std::vector<Tensor>& p, const std::vector<Tensor>& q,
          std::vector<Tensor> dw, const std::vector<Tensor>& h, std::vector<Tensor> cov, std::vector<Tensor> dh) {
  const int64_t n = static_cast<int64_t>(weights.size()) - 1, B = x.size(0);
  side_by_side([&](int c) {
    Tensor a = c == 0 ? x : y;
    for (int64_t step = 0; step <= n; ++step) {  // forward: X with W_k, Y with W_k^T in reverse order
      const int64_t k = c == 0 ? step : n - step;
      Tensor& out = acts[c][c == 0 ? k + 1 : k];
      at::mm_out(out, a, c == 0 ? weights[k].t() : weights[k]);
      a = out;
    }
    for (int64_t k = 1; k <= n; ++k) {  // input gradients of the n hidden blocks
      if (c == 0) {
        Tensor& out = grads[0][k];
        at::mm_out(out, p[k].narrow(0, 0, B), weights[k]);
      } else {
        Tensor& out = grads[1][k];
        at::mm_out(out, q[k - 1].narrow(0, B, B), weights[k - 1].t());
      }
    }
    at::mm_out(cov[c], h[c].t(), h[c]);
    at::mm_out(dh[c], h[c], cov[c]);
  });
  std::vector<int64_t> sizes;
  for (const auto& w : weights) sizes.push_back(w.numel());
  const auto share = twoway_fast::split_by_size(sizes);  // as the op shares out its weight gradients
  side_by_side([&](int t) {
    for (int64_t k : share[t]) at::mm_out(dw[k], p[k].t(), q[k]);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("step", &step); }
