// Backward pass of max DynOPool on the CPU, in one pass over the output (thesis eq. 4.2).
//
// Each output cell took the largest of its four query points; `indices` names that query
// as a flat index into the (2*H_out, 2*W_out) query grid, whose rows sit at input pixel
// coordinates `rows` and whose columns sit at `cols`. A query is the bilinear blend of four
// pixels, so the cell's gradient goes to those four pixels (input gradient) and, through the
// bilinear derivative, to its row and its column coordinate. On a pixel the derivative is the
// forward difference, as grid_sample takes it; on the border the upper tap equals the lower.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

struct Taps {
  std::vector<int64_t> lower;
  std::vector<int64_t> upper;
  std::vector<double> weight;  // of the upper tap
};

Taps linear_taps(const at::Tensor& coords, int64_t in_size) {
  const at::Tensor values = coords.detach().to(at::kDouble).contiguous();
  const double* data = values.data_ptr<double>();
  const int64_t count = values.numel();
  Taps taps{std::vector<int64_t>(count), std::vector<int64_t>(count), std::vector<double>(count)};
  for (int64_t i = 0; i < count; ++i) {
    const double lower = std::floor(data[i]);
    taps.lower[i] = static_cast<int64_t>(lower);
    taps.upper[i] = std::min(taps.lower[i] + 1, in_size - 1);
    taps.weight[i] = data[i] - lower;
    TORCH_CHECK(taps.lower[i] >= 0 && taps.lower[i] < in_size,
                "dynopool_nas::max_backward: query coordinate ", data[i], " lies outside [0, ", in_size - 1, "]");
  }
  return taps;
}

template <typename scalar_t>
void accumulate_plane_range(
    int64_t first_plane, int64_t last_plane, const at::Tensor& grad, const at::Tensor& input,
    const at::Tensor& indices, at::Tensor& grad_input, bool input_grad, const Taps& row_taps,
    const Taps& col_taps, double* row_sums, double* col_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = input.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const int64_t query_w = static_cast<int64_t>(col_taps.lower.size());
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const scalar_t* input_data = input.const_data_ptr<scalar_t>();
  const int64_t* index_data = indices.const_data_ptr<int64_t>();
  scalar_t* grad_input_data = input_grad ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t x_sh = input.stride(2), x_sw = input.stride(3);
  const int64_t gx_sh = input_grad ? grad_input.stride(2) : 0, gx_sw = input_grad ? grad_input.stride(3) : 0;
  const int64_t g_sh = grad.stride(2), g_sw = grad.stride(3);
  const int64_t i_sh = indices.stride(2), i_sw = indices.stride(3);

  for (int64_t plane = first_plane; plane < last_plane; ++plane) {
    const int64_t n = plane / channels, c = plane % channels;
    const scalar_t* x = input_data + n * input.stride(0) + c * input.stride(1);
    const scalar_t* g_plane = grad_data + n * grad.stride(0) + c * grad.stride(1);
    const int64_t* i_plane = index_data + n * indices.stride(0) + c * indices.stride(1);
    scalar_t* gx = input_grad ? grad_input_data + n * grad_input.stride(0) + c * grad_input.stride(1) : nullptr;
    for (int64_t p = 0; p < out_h; ++p) {
      for (int64_t q = 0; q < out_w; ++q) {
        const acc_t g = static_cast<acc_t>(g_plane[p * g_sh + q * g_sw]);
        const int64_t index = i_plane[p * i_sh + q * i_sw];
        const int64_t k = index / query_w, l = index - k * query_w;
        const int64_t r0 = row_taps.lower[k], r1 = row_taps.upper[k];
        const int64_t c0 = col_taps.lower[l], c1 = col_taps.upper[l];
        const acc_t wr = static_cast<acc_t>(row_taps.weight[k]), wc = static_cast<acc_t>(col_taps.weight[l]);
        const acc_t x00 = static_cast<acc_t>(x[r0 * x_sh + c0 * x_sw]);
        const acc_t x01 = static_cast<acc_t>(x[r0 * x_sh + c1 * x_sw]);
        const acc_t x10 = static_cast<acc_t>(x[r1 * x_sh + c0 * x_sw]);
        const acc_t x11 = static_cast<acc_t>(x[r1 * x_sh + c1 * x_sw]);
        row_sums[k] += static_cast<double>(g * ((1 - wc) * (x10 - x00) + wc * (x11 - x01)));
        col_sums[l] += static_cast<double>(g * ((1 - wr) * (x01 - x00) + wr * (x11 - x10)));
        if (!input_grad) {
          continue;
        }
        auto add = [&](int64_t r, int64_t col, acc_t value) {
          scalar_t& cell = gx[r * gx_sh + col * gx_sw];
          cell = static_cast<scalar_t>(static_cast<acc_t>(cell) + value);
        };
        if (wr == 0 && wc == 0) {
          add(r0, c0, g);
          continue;
        }
        add(r0, c0, g * (1 - wr) * (1 - wc));
        add(r0, c1, g * (1 - wr) * wc);
        add(r1, c0, g * wr * (1 - wc));
        add(r1, c1, g * wr * wc);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& indices, const at::Tensor& rows,
    const at::Tensor& cols, bool input_grad) {
  TORCH_CHECK(input.dim() == 4 && grad.dim() == 4 && indices.dim() == 4,
              "dynopool_nas::max_backward: expected 4-D grad, input and indices");
  TORCH_CHECK(grad.sizes() == indices.sizes(), "dynopool_nas::max_backward: grad and indices differ in shape");
  TORCH_CHECK(grad.size(0) == input.size(0) && grad.size(1) == input.size(1),
              "dynopool_nas::max_backward: grad and input differ in batch or channels");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "dynopool_nas::max_backward: indices must be int64");
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), "dynopool_nas::max_backward: grad and input dtypes differ");
  const Taps row_taps = linear_taps(rows, input.size(2));
  const Taps col_taps = linear_taps(cols, input.size(3));
  const int64_t query_h = static_cast<int64_t>(row_taps.lower.size());
  const int64_t query_w = static_cast<int64_t>(col_taps.lower.size());

  at::Tensor grad_input = input_grad ? at::zeros_like(input) : at::empty({0}, input.options());
  const int64_t planes = input.size(0) * input.size(1);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), planes));
  // one row of coordinate sums per chunk, added up in a fixed order: deterministic results
  std::vector<double> sums(chunks * (query_h + query_w), 0.0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dynopool_max_backward", [&] {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        double* row_sums = sums.data() + chunk * (query_h + query_w);
        accumulate_plane_range<scalar_t>(chunk * planes / chunks, (chunk + 1) * planes / chunks, grad, input,
                                         indices, grad_input, input_grad, row_taps, col_taps, row_sums,
                                         row_sums + query_h);
      }
    });
  });

  at::Tensor totals = at::zeros({query_h + query_w}, at::TensorOptions().dtype(at::kDouble));
  double* total_data = totals.data_ptr<double>();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t i = 0; i < query_h + query_w; ++i) {
      total_data[i] += sums[chunk * (query_h + query_w) + i];
    }
  }
  at::Tensor grad_rows = totals.slice(0, 0, query_h).to(rows.scalar_type());
  at::Tensor grad_cols = totals.slice(0, query_h).to(cols.scalar_type());
  return {grad_input, grad_rows, grad_cols};
}

}  // namespace

TORCH_LIBRARY(dynopool_nas, m) {
  m.def("max_backward(Tensor grad, Tensor input, Tensor indices, Tensor rows, Tensor cols, bool input_grad)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dynopool_nas, CPU, m) { m.impl("max_backward", &max_backward_cpu); }
