// Max DynOPool on the CPU (thesis eq. 4.2): the kernels of the ops declared in ../dynopool.cpp,
// the 2x2 max over the query grid, and the backward pass in one pass over the output.
//
// The query grid has 2*H_out rows at input pixel coordinates `rows` and 2*W_out columns at
// `cols`; output cell (p, q) takes the largest of queries (2p + a, 2q + b), a, b in {0, 1},
// and the forward pass records the winner as the code 2a + b (one byte, where max_pool2d keeps
// an 8-byte index). A query is the bilinear blend of four pixels, so the cell's gradient goes
// to those four pixels (input gradient) and, through the bilinear derivative, to its row and
// its column coordinate. On a pixel the derivative is the forward difference, as grid_sample
// takes it; on the border the upper tap equals the lower.
//
// A query is weighted as grid_sample weights it, NaN and infinity included: (1 - w) a + w b, so
// that an infinite pixel with a positive weight stays infinite; a pixel inside the input with
// weight 0 still counts (0 * inf is NaN); a pixel past the last row or column does not.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// The loops below are compiled for AVX-512, AVX2 and the x86-64 baseline; the loader picks the
// best the CPU has (GCC/Clang function multiversioning). Elsewhere they are compiled once.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DYNOPOOL_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DYNOPOOL_VECTOR_CLONES
#endif

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// A 2-D plane of a 4-D tensor: element (row, col) of plane (n, c).
template <typename T>
struct Plane {
  T* origin;
  int64_t row_stride, col_stride, channel_stride;

  Plane channel(int64_t offset) const {
    Plane shifted = *this;
    shifted.origin += offset * channel_stride;
    return shifted;
  }

  T* row(int64_t index) const { return origin + index * row_stride; }

  T& operator()(int64_t row, int64_t col) const { return origin[row * row_stride + col * col_stride]; }
};

// A 4-D tensor's data pointer and strides, read once per call (not per work item).
template <typename T>
struct Map {
  T* data;
  int64_t batch_stride, channel_stride, row_stride, col_stride;

  explicit Map(const at::Tensor& t)
      : data(data_of(t)),
        batch_stride(t.stride(0)),
        channel_stride(t.stride(1)),
        row_stride(t.stride(2)),
        col_stride(t.stride(3)) {}

  static T* data_of(const at::Tensor& t) {
    if constexpr (std::is_const_v<T>) {
      return static_cast<T*>(t.const_data_ptr());
    } else {
      return static_cast<T*>(t.data_ptr());
    }
  }

  Plane<T> plane(int64_t n, int64_t c) const {
    return {data + n * batch_stride + c * channel_stride, row_stride, col_stride, channel_stride};
  }
};

// How every kernel splits its work, the one place that tells the two layouts apart. The kernels
// take NCHW-contiguous or channels-last-contiguous inputs (the caller makes any other layout
// contiguous) and split the work into items over contiguous memory:
//   NCHW           item (n, c): a plane, every output row of one channel;
//   channels-last  item (n, band): `band_rows` output rows (one but in the backward pass off the
//                  pixel grid, see backward_band_rows), all channels (the innermost axis).
// Either way an item is a range of output rows of the plane (n, first channel), and a row of a
// contiguous map holds `lanes` values per pixel (1 for NCHW, C for channels-last), channel c of
// pixel q at q * lanes + c.
struct WorkSplit {
  bool channels_last;
  int64_t batch, channels, out_h;
  int64_t band_rows = 1;  // channels-last: output rows per item

  struct Item {
    int64_t n, channel;       // the batch index and the first channel
    int64_t first_p, last_p;  // the output rows [first_p, last_p)
  };

  int64_t bands() const { return (out_h + band_rows - 1) / band_rows; }

  int64_t items() const { return batch * (channels_last ? bands() : channels); }

  int64_t lanes() const { return channels_last ? channels : 1; }

  Item operator[](int64_t item) const {
    if (channels_last) {
      const int64_t first = item % bands() * band_rows;
      return {item / bands(), 0, first, std::min(out_h, first + band_rows)};
    }
    return {item / channels, item % channels, 0, out_h};
  }
};

// The largest of four and its position: the first maximum wins and NaN propagates (the last
// NaN wins), as in max_pool2d. Branch-free, so that loops over channels vectorize and random
// data costs no mispredicted comparisons.
template <typename scalar_t>
inline void best_of_four(scalar_t a, scalar_t b, scalar_t c, scalar_t d, scalar_t& best, uint8_t& code) {
  const scalar_t larger_ab = b > a ? b : a, larger_cd = d > c ? d : c;
  const scalar_t largest = larger_cd > larger_ab ? larger_cd : larger_ab;
  const uint8_t after_a = a != largest, after_b = b != largest, after_c = c != largest;
  const uint8_t nan_b = b != b, nan_c = c != c, nan_d = d != d;
  const uint8_t any_nan = (a != a) | nan_b | nan_c | nan_d;
  const uint8_t last_nan = nan_d ? 3 : (nan_c ? 2 : nan_b);
  code = any_nan ? last_nan : static_cast<uint8_t>(after_a * (1 + after_b * (1 + after_c)));
  best = any_nan ? std::numeric_limits<scalar_t>::quiet_NaN() : largest;
}

// Max DynOPool on the pixel grid: the 2x2 windows of the input, read directly. The innermost loop
// runs along the contiguous axis, every other pixel of a row (NCHW) or the channels of a pixel
// (channels-last), chosen once per call: a branch inside the loops costs the small work items
// of channels-last maps about a tenth of their time.
template <typename scalar_t>
DYNOPOOL_VECTOR_CLONES void max2x2_items(const at::Tensor& grid, at::Tensor& values, at::Tensor& codes,
                                         const WorkSplit& split, int64_t begin, int64_t end) {
  const int64_t out_w = values.size(3), lanes = split.lanes();
  const Map<const scalar_t> images(grid);
  const Map<scalar_t> value_map(values);
  const Map<uint8_t> code_map(codes);
  if (lanes == 1) {
    for (int64_t item = begin; item < end; ++item) {
      const WorkSplit::Item it = split[item];
      const Plane<const scalar_t> image = images.plane(it.n, it.channel);
      const Plane<scalar_t> value_plane = value_map.plane(it.n, it.channel);
      const Plane<uint8_t> code_plane = code_map.plane(it.n, it.channel);
      for (int64_t p = it.first_p; p < it.last_p; ++p) {
        const scalar_t* __restrict__ top = image.row(2 * p);
        const scalar_t* __restrict__ bottom = image.row(2 * p + 1);
        scalar_t* __restrict__ value_row = value_plane.row(p);
        uint8_t* __restrict__ code_row = code_plane.row(p);
        for (int64_t q = 0; q < out_w; ++q) {
          best_of_four(top[2 * q], top[2 * q + 1], bottom[2 * q], bottom[2 * q + 1], value_row[q], code_row[q]);
        }
      }
    }
    return;
  }
  for (int64_t item = begin; item < end; ++item) {
    const WorkSplit::Item it = split[item];
    const Plane<const scalar_t> image = images.plane(it.n, it.channel);
    const Plane<scalar_t> value_plane = value_map.plane(it.n, it.channel);
    const Plane<uint8_t> code_plane = code_map.plane(it.n, it.channel);
    for (int64_t p = it.first_p; p < it.last_p; ++p) {
      const scalar_t* __restrict__ top = image.row(2 * p);
      const scalar_t* __restrict__ bottom = image.row(2 * p + 1);
      scalar_t* __restrict__ value_row = value_plane.row(p);
      uint8_t* __restrict__ code_row = code_plane.row(p);
      for (int64_t q = 0; q < out_w; ++q) {
        const int64_t left = 2 * q * lanes, right = left + lanes, out = q * lanes;
        for (int64_t c = 0; c < lanes; ++c) {
          best_of_four(top[left + c], top[right + c], bottom[left + c], bottom[right + c], value_row[out + c],
                       code_row[out + c]);
        }
      }
    }
  }
}

struct Taps {
  std::vector<int64_t> lower;
  std::vector<int64_t> upper;  // equal to lower on the last pixel, where there is no upper tap
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
    TORCH_CHECK(data[i] >= 0 && data[i] <= static_cast<double>(in_size - 1),
                "dynopool_nas: query coordinate ", data[i], " lies outside [0, ", in_size - 1, "]");
  }
  return taps;
}

// Every query is the pixel of the same index (r = 1/2 on even sizes): the 2x2 windows tile
// the input, so each input pixel receives exactly one write and needs no zero fill.
bool pixel_aligned(const Taps& taps, int64_t in_size) {
  if (static_cast<int64_t>(taps.lower.size()) != in_size) {
    return false;
  }
  for (int64_t i = 0; i < in_size; ++i) {
    if (taps.lower[i] != i || taps.weight[i] != 0.0) {
      return false;
    }
  }
  return true;
}

// Whether bands of `band_rows` output rows, every other band taken (the even bands, or the odd
// ones), add into disjoint input rows: an output row's input gradient lands on the taps of its
// two query rows. The query rows need not increase: the bands' spans are sorted first.
bool alternate_bands_apart(const Taps& row_taps, int64_t out_h, int64_t band_rows) {
  const int64_t bands = (out_h + band_rows - 1) / band_rows;
  for (int64_t phase = 0; phase < 2; ++phase) {
    std::vector<std::pair<int64_t, int64_t>> spans;  // the input rows [first, last] of each band
    for (int64_t band = phase; band < bands; band += 2) {
      std::pair<int64_t, int64_t> span{std::numeric_limits<int64_t>::max(), -1};
      for (int64_t k = 2 * band * band_rows; k < 2 * std::min(out_h, (band + 1) * band_rows); ++k) {
        span.first = std::min(span.first, row_taps.lower[k]);
        span.second = std::max(span.second, row_taps.upper[k]);  // upper >= lower
      }
      spans.push_back(span);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) {
      if (spans[i].first <= spans[i - 1].second) {
        return false;
      }
    }
  }
  return true;
}

// Output rows per item of the channels-last backward pass off the pixel grid. Neighbouring
// output rows add into the same input rows there, so items of single rows on two threads would
// add into the same pixels at once (and lose additions). The rows are banded instead, about 16
// items per call, and the bands are run in two phases, the even bands, then the odd ones, each
// band wide enough that the bands of one phase never share an input row (at most two bands per
// image always qualify). The bands depend on the shape and the query rows, never on the thread
// count: each pixel's additions come in the same order on any number of threads, and so do the
// coordinate sums, one set per item, added in item order.
int64_t backward_band_rows(const Taps& row_taps, int64_t batch, int64_t out_h) {
  constexpr int64_t target_items = 16;
  const int64_t bands = (target_items - 1) / std::max<int64_t>(1, batch) + 1;
  int64_t band_rows = std::max<int64_t>(1, (out_h + bands - 1) / bands);
  while ((out_h + band_rows - 1) / band_rows > 2 && !alternate_bands_apart(row_taps, out_h, band_rows)) {
    band_rows *= 2;
  }
  return band_rows;
}

// Interpolation weights in the kernel's arithmetic type.
template <typename acc_t>
std::vector<acc_t> weights_as(const Taps& taps) {
  return std::vector<acc_t>(taps.weight.begin(), taps.weight.end());
}

// One query row: input rows `top` and `bottom` blended with weight w (ops._queries' first step);
// the row `top` alone where there is no row below (bottom == top, on the last row).
template <typename scalar_t, typename acc_t>
inline void blend_rows(const scalar_t* __restrict__ top, const scalar_t* __restrict__ bottom, acc_t w,
                       acc_t* __restrict__ out, int64_t length) {
  if (bottom == top) {
    for (int64_t i = 0; i < length; ++i) {
      out[i] = static_cast<acc_t>(top[i]);
    }
    return;
  }
  for (int64_t i = 0; i < length; ++i) {
    out[i] = (1 - w) * static_cast<acc_t>(top[i]) + w * static_cast<acc_t>(bottom[i]);
  }
}

// Max DynOPool off the pixel grid: per output row, the two query rows are blended into buffers,
// then each cell's four queries are read from them and compared; the grid is never stored. Each
// buffer ends in one pixel of zeros, which a column without a right neighbour (the last column)
// reads as its upper tap: weight 0 times 0 leaves it out, as grid_sample does.
template <typename scalar_t>
DYNOPOOL_VECTOR_CLONES void sample_max_items(const at::Tensor& input, at::Tensor& values, at::Tensor& codes,
                                             const Taps& row_taps, const Taps& col_taps, const WorkSplit& split,
                                             int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t width = input.size(3), out_w = values.size(3);
  const int64_t lanes = split.lanes();  // values per pixel in a row of memory
  const int64_t row_length = width * lanes;
  const std::vector<acc_t> row_weights = weights_as<acc_t>(row_taps), col_weights = weights_as<acc_t>(col_taps);
  const acc_t* __restrict__ wc = col_weights.data();
  const int64_t* __restrict__ col_lower = col_taps.lower.data();
  std::vector<int64_t> upper_or_padding(col_taps.upper);
  for (size_t i = 0; i < upper_or_padding.size(); ++i) {
    upper_or_padding[i] = upper_or_padding[i] == col_taps.lower[i] ? width : upper_or_padding[i];
  }
  const int64_t* __restrict__ col_upper = upper_or_padding.data();
  std::vector<acc_t> buffers(2 * (row_length + lanes), acc_t(0));
  acc_t* __restrict__ even_row = buffers.data();
  acc_t* __restrict__ odd_row = even_row + row_length + lanes;
  const Map<const scalar_t> images(input);
  const Map<scalar_t> value_map(values);
  const Map<uint8_t> code_map(codes);
  for (int64_t item = begin; item < end; ++item) {
    const WorkSplit::Item it = split[item];
    const Plane<const scalar_t> image = images.plane(it.n, it.channel);
    const Plane<scalar_t> value_plane = value_map.plane(it.n, it.channel);
    const Plane<uint8_t> code_plane = code_map.plane(it.n, it.channel);
    for (int64_t p = it.first_p; p < it.last_p; ++p) {
      blend_rows(image.row(row_taps.lower[2 * p]), image.row(row_taps.upper[2 * p]), row_weights[2 * p], even_row,
                 row_length);
      blend_rows(image.row(row_taps.lower[2 * p + 1]), image.row(row_taps.upper[2 * p + 1]), row_weights[2 * p + 1],
                 odd_row, row_length);
      scalar_t* __restrict__ value_row = value_plane.row(p);
      uint8_t* __restrict__ code_row = code_plane.row(p);
      for (int64_t q = 0; q < out_w; ++q) {
        // the blended rows at the taps of query columns 2q (a) and 2q + 1 (b)
        const acc_t* __restrict__ even_a0 = even_row + col_lower[2 * q] * lanes;
        const acc_t* __restrict__ even_a1 = even_row + col_upper[2 * q] * lanes;
        const acc_t* __restrict__ even_b0 = even_row + col_lower[2 * q + 1] * lanes;
        const acc_t* __restrict__ even_b1 = even_row + col_upper[2 * q + 1] * lanes;
        const acc_t* __restrict__ odd_a0 = odd_row + col_lower[2 * q] * lanes;
        const acc_t* __restrict__ odd_a1 = odd_row + col_upper[2 * q] * lanes;
        const acc_t* __restrict__ odd_b0 = odd_row + col_lower[2 * q + 1] * lanes;
        const acc_t* __restrict__ odd_b1 = odd_row + col_upper[2 * q + 1] * lanes;
        const acc_t wa = wc[2 * q], wb = wc[2 * q + 1];
#pragma GCC ivdep
        for (int64_t c = 0; c < lanes; ++c) {
          scalar_t best;
          uint8_t code;
          best_of_four(static_cast<scalar_t>(even_a0[c] * (1 - wa) + even_a1[c] * wa),
                       static_cast<scalar_t>(even_b0[c] * (1 - wb) + even_b1[c] * wb),
                       static_cast<scalar_t>(odd_a0[c] * (1 - wa) + odd_a1[c] * wa),
                       static_cast<scalar_t>(odd_b0[c] * (1 - wb) + odd_b1[c] * wb), best, code);
          value_row[q * lanes + c] = best;
          code_row[q * lanes + c] = code;
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> max_forward_cpu(const at::Tensor& input, const at::Tensor& rows,
                                                   const at::Tensor& cols) {
  TORCH_CHECK(input.dim() == 4, "dynopool_nas::max_forward: expected a 4-D input");
  TORCH_CHECK(rows.numel() % 2 == 0 && cols.numel() % 2 == 0 && rows.numel() > 0 && cols.numel() > 0,
              "dynopool_nas::max_forward: expected 2*H_out row and 2*W_out column coordinates");
  const Taps row_taps = linear_taps(rows, input.size(2));
  const Taps col_taps = linear_taps(cols, input.size(3));
  const bool aligned = pixel_aligned(row_taps, input.size(2)) && pixel_aligned(col_taps, input.size(3));
  const bool channels_last = is_channels_last(input);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  const std::vector<int64_t> shape = {x.size(0), x.size(1), rows.numel() / 2, cols.numel() / 2};
  at::Tensor values = at::empty(shape, x.options().memory_format(format));
  at::Tensor codes = at::empty(shape, x.options().dtype(at::kByte).memory_format(format));
  const WorkSplit split{channels_last, shape[0], shape[1], shape[2]};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynopool_max_forward", [&] {
    at::parallel_for(0, split.items(), 1, [&](int64_t begin, int64_t end) {
      if (aligned) {
        max2x2_items<scalar_t>(x, values, codes, split, begin, end);
      } else {
        sample_max_items<scalar_t>(x, values, codes, row_taps, col_taps, split, begin, end);
      }
    });
  });
  return {values, codes};
}

// One output cell's share of the backward pass: its gradient g goes to the winning query's
// pixels (into gx, if given) and to the query's column coordinate (col_sums); the share of
// its row coordinate is returned, for the caller to add up along the output row.
template <typename scalar_t, bool aligned>
inline double backward_cell(const Plane<const scalar_t>& x, const Plane<scalar_t>* gx, at::opmath_type<scalar_t> g,
                            uint8_t code, int64_t p, int64_t q, const Taps& row_taps, const Taps& col_taps,
                            double* col_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = 2 * p + (code >> 1), l = 2 * q + (code & 1);
  const int64_t r0 = row_taps.lower[k], r1 = row_taps.upper[k];
  const int64_t c0 = col_taps.lower[l], c1 = col_taps.upper[l];
  const acc_t x00 = static_cast<acc_t>(x(r0, c0)), x01 = static_cast<acc_t>(x(r0, c1));
  const acc_t x10 = static_cast<acc_t>(x(r1, c0));
  if constexpr (aligned) {
    col_sums[l] += static_cast<double>(g * (x01 - x00));
    if (gx != nullptr) {  // the window's four pixels, each written once
      for (uint8_t i = 0; i < 4; ++i) {
        (*gx)(2 * p + (i >> 1), 2 * q + (i & 1)) = static_cast<scalar_t>(i == code ? g : acc_t(0));
      }
    }
    return static_cast<double>(g * (x10 - x00));
  }
  const acc_t x11 = static_cast<acc_t>(x(r1, c1));
  const acc_t wr = static_cast<acc_t>(row_taps.weight[k]), wc = static_cast<acc_t>(col_taps.weight[l]);
  col_sums[l] += static_cast<double>(g * ((1 - wr) * (x01 - x00) + wr * (x11 - x10)));
  if (gx != nullptr) {
    auto add = [&](int64_t row, int64_t col, acc_t value) {
      scalar_t& cell = (*gx)(row, col);
      cell = static_cast<scalar_t>(static_cast<acc_t>(cell) + value);
    };
    add(r0, c0, g * (1 - wr) * (1 - wc));
    add(r0, c1, g * (1 - wr) * wc);
    add(r1, c0, g * wr * (1 - wc));
    add(r1, c1, g * wr * wc);
  }
  return static_cast<double>(g * ((1 - wc) * (x10 - x00) + wc * (x11 - x01)));
}

// The backward pass of the items [begin, end). Items that run at once never add into the same
// input-gradient value: NCHW items are planes, on the pixel grid every pixel is written once,
// and channels-last items off the grid run in two phases of bands apart (backward_band_rows).
template <typename scalar_t, bool aligned>
void backward_items(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& codes,
                    const at::Tensor& grad_input, bool input_grad, const Taps& row_taps, const Taps& col_taps,
                    const WorkSplit& split, int64_t begin, int64_t end, double* row_sums, double* col_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_w = grad.size(3), lanes = split.lanes();
  const Map<const scalar_t> inputs(input), grads(grad);
  const Map<const uint8_t> code_map(codes);
  const Map<scalar_t> grad_inputs(input_grad ? grad_input : input);
  for (int64_t item = begin; item < end; ++item) {
    const WorkSplit::Item it = split[item];
    const Plane<const scalar_t> x = inputs.plane(it.n, it.channel), g = grads.plane(it.n, it.channel);
    const Plane<const uint8_t> code = code_map.plane(it.n, it.channel);
    const Plane<scalar_t> gx = grad_inputs.plane(it.n, it.channel);
    for (int64_t p = it.first_p; p < it.last_p; ++p) {
      double even_row = 0, odd_row = 0;  // query rows 2p and 2p + 1, summed in registers
      for (int64_t q = 0; q < out_w; ++q) {
        for (int64_t c = 0; c < lanes; ++c) {
          const uint8_t winner = code.channel(c)(p, q);
          const Plane<scalar_t> gx_c = gx.channel(c);
          const double row_term = backward_cell<scalar_t, aligned>(
              x.channel(c), input_grad ? &gx_c : nullptr, static_cast<acc_t>(g.channel(c)(p, q)), winner, p, q,
              row_taps, col_taps, col_sums);
          const double odd = winner >> 1;
          even_row += row_term * (1 - odd);
          odd_row += row_term * odd;
        }
      }
      row_sums[2 * p] += even_row;
      row_sums[2 * p + 1] += odd_row;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& codes, const at::Tensor& rows,
    const at::Tensor& cols, bool input_grad) {
  TORCH_CHECK(input.dim() == 4 && grad.dim() == 4 && codes.dim() == 4,
              "dynopool_nas::max_backward: expected 4-D grad, input and codes");
  TORCH_CHECK(grad.sizes() == codes.sizes(), "dynopool_nas::max_backward: grad and codes differ in shape");
  TORCH_CHECK(grad.size(0) == input.size(0) && grad.size(1) == input.size(1),
              "dynopool_nas::max_backward: grad and input differ in batch or channels");
  TORCH_CHECK(codes.scalar_type() == at::kByte, "dynopool_nas::max_backward: codes must be uint8");
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), "dynopool_nas::max_backward: grad and input dtypes differ");
  TORCH_CHECK(rows.numel() == 2 * grad.size(2) && cols.numel() == 2 * grad.size(3),
              "dynopool_nas::max_backward: expected 2*H_out row and 2*W_out column coordinates");
  const Taps row_taps = linear_taps(rows, input.size(2));
  const Taps col_taps = linear_taps(cols, input.size(3));
  const int64_t query_h = rows.numel(), query_w = cols.numel();
  const bool aligned = pixel_aligned(row_taps, input.size(2)) && pixel_aligned(col_taps, input.size(3));

  at::Tensor grad_input = !input_grad ? at::empty({0}, input.options())
                          : aligned   ? at::empty_like(input)
                                      : at::empty_like(input).zero_();
  const bool channels_last = is_channels_last(input), banded = channels_last && !aligned;
  const int64_t band_rows = banded ? backward_band_rows(row_taps, input.size(0), grad.size(2)) : 1;
  const WorkSplit split{channels_last, input.size(0), input.size(1), grad.size(2), band_rows};
  const int64_t items = split.items();
  // one row of coordinate sums per chunk, added up in a fixed order: deterministic results; for
  // bands a chunk per item, so that the order does not depend on the thread count either
  const int64_t chunks = std::max<int64_t>(1, banded ? items : std::min<int64_t>(at::get_num_threads(), items));
  std::vector<double> sums(chunks * (query_h + query_w), 0.0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dynopool_max_backward", [&] {
    if (banded) {
      const int64_t bands = split.bands();
      for (int64_t phase = 0; phase < 2; ++phase) {  // the even bands of every image, then the odd
        const int64_t phase_bands = (bands - phase + 1) / 2;
        at::parallel_for(0, split.batch * phase_bands, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t item = i / phase_bands * bands + 2 * (i % phase_bands) + phase;
            double* row_sums = sums.data() + item * (query_h + query_w);
            backward_items<scalar_t, false>(grad, input, codes, grad_input, input_grad, row_taps, col_taps, split,
                                            item, item + 1, row_sums, row_sums + query_h);
          }
        });
      }
      return;
    }
    at::parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t last_chunk) {
      for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
        double* row_sums = sums.data() + chunk * (query_h + query_w);
        const int64_t begin = chunk * items / chunks, end = (chunk + 1) * items / chunks;
        if (aligned) {
          backward_items<scalar_t, true>(grad, input, codes, grad_input, input_grad, row_taps, col_taps,
                                         split, begin, end, row_sums, row_sums + query_h);
        } else {
          backward_items<scalar_t, false>(grad, input, codes, grad_input, input_grad, row_taps, col_taps,
                                          split, begin, end, row_sums, row_sums + query_h);
        }
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
  // copies, so that the two outputs never share the storage of `totals`
  at::Tensor grad_rows = totals.slice(0, 0, query_h).to(rows.scalar_type(), false, true);
  at::Tensor grad_cols = totals.slice(0, query_h).to(cols.scalar_type(), false, true);
  return {grad_input, grad_rows, grad_cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(dynopool_nas, CPU, m) {
  m.impl("max_forward", &max_forward_cpu);
  m.impl("max_backward", &max_backward_cpu);
}
