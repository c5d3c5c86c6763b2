// The CUDA loss's reduction kernels (csrc/cuda/loss_sums.cuh) under the host emulation, over the
// forward's segment table (csrc/cuda/twoway_loss_terms.cuh) and, for the log mid-way term, the column
// sums, for tests/test_cuda_emulation.py.
#include <torch/extension.h>

#include "cuda_emulation.h"  // first: it defines what the kernels' CUDA keywords mean here

#include <ATen/OpMathType.h>

#include "cuda/twoway_loss_terms.cuh"

namespace {

using at::Tensor;

std::vector<Tensor> contiguous_all(const std::vector<Tensor>& list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

// column_sums_kernel over (rows, cols) a and b: (cols,) in double, as twoway_loss.cu launches it.
Tensor column_sums(const Tensor& a_in, const Tensor& b_in) {
  using namespace twoway_fast;
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t rows = a.size(0), cols = a.size(1);
  auto sums = at::empty({cols}, a.options().dtype(at::kDouble));
  const auto blocks = static_cast<unsigned>((cols + kColumnWidth - 1) / kColumnWidth);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "column_sums", [&] {
    emulate_launch(dim3(blocks), dim3(kColumnWidth, kColumnStripes), [&] {
      column_sums_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), rows, cols,
                                   sums.data_ptr<double>());
    });
  });
  return sums;
}

// (sums (kSums,) in double, terms (kTerms,) in the accumulation type, the table's thread blocks),
// launched on `blocks` thread blocks (0: the table's own; any count is correct, fewer walk more tiles);
// loss_options as the op's (the log mid-way term from column_sums(hx, hy)), as twoway_loss.cu runs it.
std::tuple<Tensor, Tensor, int64_t> loss_sums(const Tensor& x, const Tensor& y, const Tensor& x_hat,
                                              const Tensor& y_hat, const Tensor& hx, const Tensor& hy,
                                              const Tensor& cx, const Tensor& cy, const Tensor& cxy,
                                              const Tensor& ex, const Tensor& ey,
                                              const std::vector<Tensor>& weights,
                                              const std::vector<Tensor>& gammas, std::vector<double> coefficients,
                                              int64_t options, int64_t blocks) {
  using namespace twoway_fast;
  const auto w = contiguous_all(weights), g = contiguous_all(gammas);
  const auto table = loss_forward_table(x.contiguous(), y.contiguous(), x_hat.contiguous(), y_hat.contiguous(),
                                        hx.contiguous(), hy.contiguous(),
                                        LossMatrices{cx.contiguous(), cy.contiguous(), cxy.contiguous(),
                                                     ex.contiguous(), ey.contiguous()},
                                        w, g, options);
  if (blocks == 0) blocks = table.blocks();
  auto partials = at::empty({blocks, kSums}, x.options().dtype(at::kDouble));
  auto sums = at::empty({kSums}, x.options().dtype(at::kDouble));
  auto terms = at::empty({kTerms}, x.options().dtype(stats_dtype(x.scalar_type())));
  const bool midway_log = has(options, option::kMidwayLog);
  const auto midway_columns = midway_log ? column_sums(hx, hy) : Tensor();
  const LossCoefficients c(coefficients);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_sums", [&] {
    emulate_launch(dim3(static_cast<unsigned>(blocks)), dim3(kThreads), [&] {
      loss_sums_kernel<scalar_t, at::opmath_type<scalar_t>>(table.segments(), partials.data_ptr<double>());
    });
    emulate_launch(dim3(1), dim3(32), [&] {
      using A = at::opmath_type<scalar_t>;
      loss_finish_kernel<A>(partials.data_ptr<double>(), static_cast<int>(blocks), static_cast<double>(x.size(0)),
                            c, options, midway_log ? midway_columns.data_ptr<double>() : nullptr,
                            midway_log ? midway_columns.numel() : 0, sums.data_ptr<double>(), terms.data_ptr<A>());
    });
  });
  return {sums, terms, table.blocks()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("loss_sums", &loss_sums);
  m.def("column_sums", &column_sums);
}
