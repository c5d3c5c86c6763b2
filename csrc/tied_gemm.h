// The GEMMs of a tied layer through ATen (MKL/oneDNN on CPU, cuBLAS on CUDA), dense or locally
// dense. A layer's weight W is (out, in), or (M, out/M, in/M) for a locally dense layer, whose
// block-diagonal matrix is never built: each block multiplies its own column slices (strided views,
// no copies).
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace twoway_fast {

// The dtype the GEMMs multiply in, where not the inputs' own (nullopt): bfloat16 does twice float32's
// work per cycle on CPUs with AVX512_BF16 or AMX (oneDNN), summing in float32 inside the GEMM; the
// products come back rounded to bfloat16, then in the inputs' dtype.
using Products = c10::optional<at::ScalarType>;

inline bool lowers(const at::Tensor& t, Products products) { return products && *products != t.scalar_type(); }

// t in the products' dtype (t itself where that is its own).
inline at::Tensor in_products(const at::Tensor& t, Products products) {
  return lowers(t, products) ? t.to(*products) : t;
}

inline std::vector<at::Tensor> in_products(std::vector<at::Tensor> list, Products products) {
  for (auto& t : list) t = in_products(t, products);
  return list;
}

inline int64_t weight_out(const at::Tensor& w) { return w.dim() == 2 ? w.size(0) : w.size(0) * w.size(1); }
inline int64_t weight_in(const at::Tensor& w) { return w.dim() == 2 ? w.size(1) : w.size(0) * w.size(2); }

// out = a W^T (transposed = false: the X channel's use, and the Y channel's input gradient) or a W
// (transposed = true: the Y channel's use, and the X channel's input gradient). out must be
// (a.size(0), the product's width) with unit column stride. Biases are added by the passes after the
// GEMM, not through addmm: its bias copy and beta = 1 product cost a pass of their own, and far more
// when other processes load the cores.
inline void tied_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& w, bool transposed) {
  if (w.dim() == 2) {
    at::mm_out(out, a, transposed ? w : w.t());
    return;
  }
  const int64_t blocks = w.size(0);
  const int64_t in_w = transposed ? w.size(1) : w.size(2), out_w = transposed ? w.size(2) : w.size(1);
  for (int64_t m = 0; m < blocks; ++m) {
    const auto wm = w.select(0, m);
    auto out_m = out.narrow(1, m * out_w, out_w);
    at::mm_out(out_m, a.narrow(1, m * in_w, in_w), transposed ? wm : wm.t());
  }
}

inline at::Tensor tied_mm(const at::Tensor& a, const at::Tensor& w, bool transposed, Products products = {}) {
  if (lowers(a, products)) {
    return tied_mm(a.to(*products), in_products(w, products), transposed).to(a.scalar_type());
  }
  auto out = at::empty({a.size(0), transposed ? weight_in(w) : weight_out(w)}, a.options());
  tied_mm_out(out, a, w, transposed);
  return out;
}

// The weight gradient of both channels in one GEMM over the concatenated batch:
// dW = P^T Q with P = [gA; hB] (2B, out) and Q = [hA; gB] (2B, in), contiguous, in P's dtype.
inline at::Tensor tied_weight_grad(const at::Tensor& p, const at::Tensor& q, const at::Tensor& w,
                                   Products products = {}) {
  if (lowers(p, products)) {
    return tied_weight_grad(p.to(*products), q.to(*products), w).to(p.scalar_type());
  }
  auto dw = at::empty(w.sizes(), p.options());
  if (w.dim() == 2) return at::mm_out(dw, p.t(), q);
  const int64_t out_w = w.size(1), in_w = w.size(2);
  for (int64_t m = 0; m < w.size(0); ++m) {
    auto dw_m = dw.select(0, m);
    at::mm_out(dw_m, p.narrow(1, m * out_w, out_w).t(), q.narrow(1, m * in_w, in_w));
  }
  return dw;
}

}  // namespace twoway_fast
