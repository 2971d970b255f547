// Dilated convolution on the CPU: the backend of dilated_conv_gemm.h's drivers. Every loop walks rows: for one
// kernel tap, the outputs whose reads fall inside the input form one run [first_output_inside, last_output_inside)
// (ConvAxis), so the inner loops are plain strided copies and multiply-adds, contiguous when the stride is 1. A run's
// pointers start at its first element: where padding puts output 0's read left of the input, a pointer there would
// lie outside the tensor, undefined behaviour even if never read (UBSan found it, on an empty input's null data).
//  - im2col: parallel over column rows (c, i, j); col2im: parallel over input channels, a gather into a row buffer
//    in tap order, then added to the gradient;
//  - depthwise forward and input gradient: parallel over (n, c) planes, one output (or input) row at a time, taps in
//    the order of dilated_conv.h's depthwise_sum / depthwise_input_grad, so each element's sum is theirs;
//  - depthwise weight gradient and the bias gradient: parallel over channels, sums in a fixed order (eight lanes per
//    row, rows in order).
//  - float32's general case: oneDNN's convolution (ATen's), or tap by tap (a GEMM per kernel tap over the outputs it
//    reads inside the input) where most products would multiply padding.
// No atomics: segops' own loops give the same bits for any thread count. ATen's GEMMs and oneDNN's convolution give
// the same bits run to run; deterministic mode keeps float32 off the two whose bits may change with the thread count
// (oneDNN's weight gradient, tap by tap). The input is read through its strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_memory.h"
#include "dilated_conv/dilated_conv.h"
#include "dilated_conv/dilated_conv_checks.h"
#include "dilated_conv/dilated_conv_gemm.h"

namespace segops {
namespace {

using UnitStride = std::integral_constant<int64_t, 1>;

// Calls fn(stride) with the stride as UnitStride when it is 1 (so the loops vectorise), as int64_t otherwise.
template <class Fn>
void with_stride(int64_t stride, const Fn& fn) {
  if (stride == 1) {
    fn(UnitStride{});
  } else {
    fn(stride);
  }
}

// sum_k a[k] * b[k * b_stride] in acc_t, over eight lanes (k mod 8) added in a fixed order: vectorisable, and the
// same bits for any thread count.
template <typename acc_t, typename a_t, typename b_t, typename stride_t>
acc_t ordered_dot(const a_t* a, const b_t* b, stride_t b_stride, int64_t count) {
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += static_cast<acc_t>(a[k + l]) * static_cast<acc_t>(b[(k + l) * b_stride]);
  }
  for (int l = 0; k < count; ++k, ++l) lanes[l] += static_cast<acc_t>(a[k]) * static_cast<acc_t>(b[k * b_stride]);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// sum_k a[k], likewise.
template <typename acc_t, typename a_t>
acc_t ordered_sum(const a_t* a, int64_t count) {
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += static_cast<acc_t>(a[k + l]);
  }
  for (int l = 0; k < count; ++k, ++l) lanes[l] += static_cast<acc_t>(a[k]);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// For each tap k of an axis, the run [first, last) of outputs that read inside the input: computed once per call
// (two integer divisions each) rather than per row, where they would cost more than a short row's arithmetic.
struct InsideRun {
  int64_t first, last;
};

std::vector<InsideRun> inside_runs(const ConvAxis& axis) {
  std::vector<InsideRun> runs(axis.kernel);
  for (int64_t k = 0; k < axis.kernel; ++k) runs[k] = {axis.first_output_inside(k), axis.last_output_inside(k)};
  return runs;
}

// Grain of parallel loops whose iterations each cost about `work` elements.
int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work));
}

// One depthwise plane: its input (read through the row and pixel strides), its filter (kH x kW) and its output
// (written through its row and pixel strides: contiguous or channels_last).
template <typename scalar_t>
struct DepthwisePlane {
  const scalar_t* input;
  const scalar_t* filter;
  scalar_t* output;
  int64_t stride_h, stride_w, out_stride_h, out_stride_w;
};

// dst[x * step] = value(x) for x in [0, count): a contiguous loop where the step is 1 (it vectorises).
template <typename scalar_t, class Value>
inline __attribute__((always_inline)) void store_row(scalar_t* dst, int64_t step, int64_t count, const Value& value) {
  if (step == 1) {
    for (int64_t x = 0; x < count; ++x) dst[x] = value(x);
  } else {
    for (int64_t x = 0; x < count; ++x) dst[x * step] = value(x);
  }
}

// The depthwise forward of one plane, row by row: each output row sums its taps in order in `sums` (Wo of acc_t),
// then adds the bias; step = the horizontal stride times the input's pixel stride.
template <typename scalar_t, typename acc_t, typename stride_t>
inline __attribute__((always_inline)) void depthwise_plane_forward(const DepthwisePlane<scalar_t>& p, acc_t bias,
                                                                   const ConvAxis& ay, const ConvAxis& ax,
                                                                   const InsideRun* runs, acc_t* sums, stride_t step) {
  for (int64_t oy = 0; oy < ay.out; ++oy) {
    std::fill(sums, sums + ax.out, acc_t(0));
    for (int64_t i = 0; i < ay.kernel; ++i) {
      const int64_t y = ay.input_at(oy, i);
      if (y < 0 || y >= ay.in) continue;
      for (int64_t j = 0; j < ax.kernel; ++j) {
        const acc_t w = static_cast<acc_t>(p.filter[i * ax.kernel + j]);
        const int64_t first = runs[j].first, last = runs[j].last;
        if (first >= last) continue;
        const scalar_t* src = p.input + y * p.stride_h + ax.input_at(first, j) * p.stride_w;
        for (int64_t ox = first; ox < last; ++ox) sums[ox] += w * static_cast<acc_t>(src[(ox - first) * step]);
      }
    }
    store_row(p.output + oy * p.out_stride_h, p.out_stride_w, ax.out,
              [&](int64_t ox) { return static_cast<scalar_t>(sums[ox] + bias); });
  }
}

// The common case (float, contiguous rows, horizontal stride 1) compiled for AVX2 as well as the baseline x86-64 the
// extension is built for (SSE2); GCC picks the copy when the library loads. AVX2 without FMA: each element still
// rounds its product, then its sum, as the baseline and the GPU kernels do.
__attribute__((target_clones("avx2", "default"))) void depthwise_plane_forward_unit_float(
    const DepthwisePlane<float>& p, float bias, const ConvAxis& ay, const ConvAxis& ax, const InsideRun* runs,
    float* sums) {
  depthwise_plane_forward(p, bias, ay, ax, runs, sums, UnitStride{});
}

// One thread's scratch for the float forward with a horizontal stride of 1: a row of sums, and copies of the input
// rows that the current output row reads, each with `pad` zeros on its left and zeros up to `width` on its right, so
// that every tap of every output reads inside it. The copies are a ring: input row y lives in slot y mod slots, where
// slots = the kernel's vertical span (or the input's rows, if fewer), which holds every row one output row reads, so
// each input row of a plane is copied once. Only [pad, pad + in) of a copy is ever written: its zeros are set once.
struct PaddedInputRows {
  int64_t width;                       // the outputs rounded up to 8, plus the kernel's horizontal span
  int64_t slots;                       // (kH - 1) * dilation + 1, at most the input's rows
  std::vector<float> rows;             // slots x width
  std::vector<int64_t> row_in_slot;    // the input row each slot holds, -1 for none
  std::vector<float> sums;             // width
  std::vector<const float*> tap_rows;  // the copies of the output row's taps that fall inside the input, in order
  std::vector<const float*> tap_filters;

  // Copies at most this many floats (4 MB) a thread: past it (padding or dilation far beyond the input) the forward
  // takes depthwise_plane_forward.
  static constexpr int64_t kMaxFloats = int64_t(1) << 20;

  static int64_t span(const ConvAxis& axis) {  // (kernel - 1) * dilation + 1, or kMaxFloats + 1 where that is more
    const int64_t gaps = axis.kernel - 1;
    return gaps > 0 && axis.dilation > kMaxFloats / gaps ? kMaxFloats + 1 : gaps * axis.dilation + 1;
  }
  // The ring needs no more slots than the input has rows: rows y < in then have a slot each.
  static int64_t slots_for(const ConvAxis& ay) { return std::min(span(ay), std::max<int64_t>(ay.in, 1)); }
  static int64_t width_for(const ConvAxis& ax) { return (ax.out + 7) / 8 * 8 + span(ax) - 1; }
  static bool fits(const ConvAxis& ay, const ConvAxis& ax) {
    const int64_t width = width_for(ax), slots = slots_for(ay);
    return width <= kMaxFloats && slots <= kMaxFloats / width;
  }

  PaddedInputRows(const ConvAxis& ay, const ConvAxis& ax)
      : width(width_for(ax)),
        slots(slots_for(ay)),
        rows(slots * width, 0.0f),
        row_in_slot(slots),
        sums(width),
        tap_rows(ay.kernel),
        tap_filters(ay.kernel) {}

  // Forgets the rows of the previous plane.
  void start_plane() { std::fill(row_in_slot.begin(), row_in_slot.end(), int64_t(-1)); }

  // The padded copy of input row y (0 <= y < in) of the plane whose rows start at `input`, `stride_h` apart.
  const float* padded_row(const float* input, int64_t stride_h, const ConvAxis& ax, int64_t y) {
    const int64_t slot = y % slots;
    float* copy = rows.data() + slot * width;
    if (row_in_slot[slot] != y) {
      // An input without columns (outputs made of padding alone) has nothing to copy; memcpy must not see its null
      // data.
      if (ax.in > 0) std::memcpy(copy + ax.pad, input + y * stride_h, ax.in * sizeof(float));
      row_in_slot[slot] = y;
    }
    return copy;
  }
};

// 8 floats, in two SSE registers on the baseline and one AVX register in the AVX2 copy; read at any alignment, and
// allowed to alias the floats it is read from (as immintrin.h's __m256_u).
using FloatLanes = float __attribute__((vector_size(32)));
using UnalignedFloatLanes = float __attribute__((vector_size(32), aligned(4), may_alias));

inline __attribute__((always_inline)) const UnalignedFloatLanes& lanes_at(const float* at) {
  return *reinterpret_cast<const UnalignedFloatLanes*>(at);
}

// sums[x0 + l] for l in [0, 8 * chains): the sums of outputs x0.. over the taps, `chains` independent 8-lane chains
// so that the adds of one tap overlap.
template <int chains>
inline __attribute__((always_inline)) void depthwise_block_sums(const PaddedInputRows& scratch, int64_t taps_inside,
                                                                const ConvAxis& ax, int64_t x0, float* sums) {
  FloatLanes a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (int64_t t = 0; t < taps_inside; ++t) {
    const float* row = scratch.tap_rows[t] + x0;
    const float* filter = scratch.tap_filters[t];
    for (int64_t j = 0; j < ax.kernel; ++j) {
      const float w = filter[j];
      const float* src = row + j * ax.dilation;
      a0 += w * lanes_at(src);
      if constexpr (chains == 4) {
        a1 += w * lanes_at(src + 8);
        a2 += w * lanes_at(src + 16);
        a3 += w * lanes_at(src + 24);
      }
    }
  }
  std::memcpy(sums + x0, &a0, sizeof a0);
  if constexpr (chains == 4) {
    std::memcpy(sums + x0 + 8, &a1, sizeof a1);
    std::memcpy(sums + x0 + 16, &a2, sizeof a2);
    std::memcpy(sums + x0 + 24, &a3, sizeof a3);
  }
}

// The depthwise forward of one float plane with a horizontal stride of 1 and finite weights, each output summed in
// registers over all its taps: depthwise_plane_forward without its per-tap bounds and its row of sums in memory
// (1.6x faster at [1, 728, 65, 65]). A tap whose input lies in the horizontal padding reads a zero there and adds
// w * 0 = +-0, which leaves a sum unchanged: the sum starts at +0, and no float sum in round-to-nearest is -0 unless
// both terms are, so it is never -0, and s + (+-0) == s bit for bit. So the result is depthwise_sum's, tap for tap. A
// non-finite weight would turn the padding's zeros into NaN: such planes take depthwise_plane_forward.
__attribute__((target_clones("avx2", "default"))) void depthwise_plane_forward_padded_float(
    const DepthwisePlane<float>& p, float bias, const ConvAxis& ay, const ConvAxis& ax, PaddedInputRows& scratch) {
  float* sums = scratch.sums.data();
  scratch.start_plane();
  for (int64_t oy = 0; oy < ay.out; ++oy) {
    int64_t taps_inside = 0;
    for (int64_t i = 0; i < ay.kernel; ++i) {
      const int64_t y = ay.input_at(oy, i);
      if (y < 0 || y >= ay.in) continue;
      scratch.tap_rows[taps_inside] = scratch.padded_row(p.input, p.stride_h, ax, y);
      scratch.tap_filters[taps_inside] = p.filter + i * ax.kernel;
      ++taps_inside;
    }
    int64_t x0 = 0;
    for (; x0 + 32 <= ax.out; x0 += 32) depthwise_block_sums<4>(scratch, taps_inside, ax, x0, sums);
    for (; x0 < ax.out; x0 += 8) depthwise_block_sums<1>(scratch, taps_inside, ax, x0, sums);
    store_row(p.output + oy * p.out_stride_h, p.out_stride_w, ax.out, [&](int64_t ox) { return sums[ox] + bias; });
  }
}

// Runs an AVX2-capable copy where there is one (float, unit step): true if it ran.
template <typename scalar_t, typename acc_t>
bool depthwise_plane_forward_fast(const DepthwisePlane<scalar_t>&, acc_t, const ConvAxis&, const ConvAxis&,
                                  const InsideRun*, acc_t*, std::optional<PaddedInputRows>&) {
  return false;
}

inline bool depthwise_plane_forward_fast(const DepthwisePlane<float>& p, float bias, const ConvAxis& ay,
                                         const ConvAxis& ax, const InsideRun* runs, float* sums,
                                         std::optional<PaddedInputRows>& scratch) {
  const float* filter_end = p.filter + ay.kernel * ax.kernel;
  if (std::all_of(p.filter, filter_end, [](float w) { return std::isfinite(w); }) && PaddedInputRows::fits(ay, ax)) {
    if (!scratch.has_value()) scratch.emplace(ay, ax);
    depthwise_plane_forward_padded_float(p, bias, ay, ax, *scratch);
  } else {
    depthwise_plane_forward_unit_float(p, bias, ay, ax, runs, sums);
  }
  return true;
}

// Whether the general case runs on ATen's convolution, oneDNN: for float32 where ATen has oneDNN and it is enabled
// (torch.backends.mkldnn), as F.conv2d does. oneDNN's direct convolution beats im2col + GEMM at every size of the
// benchmark (1.2-3.2x forward, up to 2.2x backward: no column buffer through memory), but where the weight outweighs
// the column buffer (weight_outweighs_columns, below). float64 and the half types keep the GEMM path, which
// accumulates half types in float (oneDNN's paths for them were not measured).
bool runs_on_onednn(const at::Tensor& input) {
  return input.scalar_type() == at::kFloat && at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
}

// The share of a convolution's multiply-adds whose input lies inside the image: tap (i, j) reads inside for the
// outputs of its row run times those of its column run; the rest multiply padding.
double inside_fraction(const CheckedConv& c) {
  const auto inside_outputs = [](const ConvAxis& axis) {
    int64_t sum = 0;
    for (const InsideRun& run : inside_runs(axis)) sum += std::max<int64_t>(0, run.last - run.first);
    return static_cast<double>(sum);
  };
  return inside_outputs(c.ay) * inside_outputs(c.ax) /
         (static_cast<double>(c.ay.kernel * c.ay.out) * static_cast<double>(c.ax.kernel * c.ax.out));
}

// At most this share inside, the float32 general case runs tap by tap (below). oneDNN multiplies every tap, padding
// included (past dilation 3 on AVX2 its convolution is an im2col + GEMM), so the share is what tap by tap costs of
// oneDNN's work. Measured at DeepLab's shapes ([1-4, 256-2048, 16-64, 16-64] -> 21-512, 3x3, rates 2-24): tap by
// tap wins from 0.70 inside down (forward 1.1x, backward 1.2-1.7x; 5-7x with one tap inside) and ties or loses from
// 0.77 up, and at dilation 4 even at 0.69.
constexpr double kTapByTapMaxInsideFraction = 0.6;

// Whether the float32 general case runs tap by tap: one group, most of its taps' reads in the padding (DeepLab's
// ASPP rates at output stride 16, its multi-grid's dilation 8), outside deterministic mode (the GEMMs' bits may
// change with the thread count, as oneDNN's weight gradient's do).
bool runs_tap_by_tap(const CheckedConv& c) {
  return c.groups == 1 && !at::globalContext().deterministicAlgorithms() &&
         inside_fraction(c) <= kTapByTapMaxInsideFraction;
}

// oneDNN reorders the whole weight into its blocked layout on every call (for the forward and again for the input
// gradient) and the weight gradient back, at memory speed; the GEMM path (im2col + GEMM) reads the weight in place and
// instead writes and reads a column buffer of C_in * taps * N * Ho * Wo elements, C_out / (N * Ho * Wo) times smaller
// than the weight. Where the weight is out of cache and at least as large as that buffer (FCN's and DeconvNet's fc6
// and fc7 on a map of 8x8, wide layers on small maps), the GEMM path moves less. Measured on AVX2 ([1-4, 512-4096,
// 8-64, 8-64] -> 256-4096, 1x1 to 7x7): 1.2-2.9x forward and backward where the weight was >= 37 MB and C_out >=
// N * Ho * Wo; 0.8-1.1x for weights of 2-17 MB at the same shapes, and 0.9-1.0x for a 75 MB weight at C_out =
// N * Ho * Wo / 2.
constexpr int64_t kColumnGemmMinWeightBytes = int64_t(32) << 20;

// Whether the float32 general case runs the GEMM path, as above: one group, a weight of at least 32 MiB and at least
// as many output channels as output positions.
bool weight_outweighs_columns(const CheckedConv& c, const at::Tensor& weight) {
  return c.groups == 1 && weight.numel() * weight.element_size() >= kColumnGemmMinWeightBytes &&
         c.out_channels >= c.batch * c.ay.out * c.ax.out;
}

// The convolution as one GEMM per tap over the outputs that tap reads inside the input (its row run times its
// column run), for the whole batch at once: [C_out, C_in] @ [C_in, N * rows * cols]. Padding is never multiplied,
// and no column buffer is built: each GEMM's operand is a copy of the input window its tap reads. The loops see
// every tensor channel-major ([C, N, H, W], a transposed view) so that a window of the whole batch is one matrix.
struct TapByTap {
  const CheckedConv& c;
  std::vector<InsideRun> rows, cols;  // per tap row i (column j): the outputs reading inside the input

  explicit TapByTap(const CheckedConv& checked) : c(checked), rows(inside_runs(c.ay)), cols(inside_runs(c.ax)) {}

  bool reads_inside(int64_t i, int64_t j) const { return rows[i].first < rows[i].last && cols[j].first < cols[j].last; }
  // The outputs of tap (i, j) that read inside, in a channel-major [C_out, N, Ho, Wo] view.
  at::Tensor output_window(const at::Tensor& by_channel, int64_t i, int64_t j) const {
    return by_channel.slice(2, rows[i].first, rows[i].last).slice(3, cols[j].first, cols[j].last);
  }
  // The input elements they read, in a channel-major [C_in, N, H, W] view.
  at::Tensor input_window(const at::Tensor& by_channel, int64_t i, int64_t j) const {
    const int64_t y0 = c.ay.input_at(rows[i].first, i), x0 = c.ax.input_at(cols[j].first, j);
    return by_channel.slice(2, y0, c.ay.input_at(rows[i].last - 1, i) + 1, c.ay.stride)
        .slice(3, x0, c.ax.input_at(cols[j].last - 1, j) + 1, c.ax.stride);
  }
  // Either window as a [channels, N * rows * cols] matrix (a copy where the window is not dense).
  static at::Tensor as_matrix(const at::Tensor& window) { return window.reshape({window.size(0), -1}); }
  // Tap (i, j)'s [C_out, C_in] weights, a strided view: the GEMM copies the taps it uses (a copy of the whole
  // weight, 19 MB for an ASPP branch, would be a call's largest allocation).
  static at::Tensor tap_weight(const at::Tensor& weight, int64_t i, int64_t j) {
    return weight.select(3, j).select(2, i);
  }

  // Returns the output in the input's memory format.
  at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) const {
    at::Tensor output = at::empty(c.output_shape(), input.options().memory_format(conv_memory_format(input)));
    if (bias.has_value()) {
      output.copy_(bias->view({1, -1, 1, 1}).expand_as(output));
    } else {
      output.zero_();
    }
    const at::Tensor input_by_channel = input.transpose(0, 1), output_by_channel = output.transpose(0, 1);
    for (int64_t i = 0; i < c.ay.kernel; ++i) {
      for (int64_t j = 0; j < c.ax.kernel; ++j) {
        if (!reads_inside(i, j)) continue;
        at::Tensor window = output_window(output_by_channel, i, j);
        window.add_(
            at::mm(tap_weight(weight, i, j), as_matrix(input_window(input_by_channel, i, j))).view(window.sizes()));
      }
    }
    return output;
  }

  // (grad_input in the input's memory format, grad_weight), each undefined where its flag is false.
  std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                                              bool input_grad, bool weight_grad) const {
    const at::Tensor grad_by_channel = grad.transpose(0, 1), input_by_channel = input.transpose(0, 1);
    at::Tensor grad_input, grad_weight;
    if (input_grad) {
      grad_input = at::empty(input.sizes(), input.options().memory_format(conv_memory_format(input))).zero_();
    }
    // A tap that reads only padding has a zero gradient.
    if (weight_grad) grad_weight = at::zeros(weight.sizes(), weight.options());
    const at::Tensor grad_input_by_channel = input_grad ? grad_input.transpose(0, 1) : at::Tensor();
    for (int64_t i = 0; i < c.ay.kernel; ++i) {
      for (int64_t j = 0; j < c.ax.kernel; ++j) {
        if (!reads_inside(i, j)) continue;
        const at::Tensor grad_columns = as_matrix(output_window(grad_by_channel, i, j));
        if (input_grad) {
          at::Tensor window = input_window(grad_input_by_channel, i, j);
          window.add_(at::mm(tap_weight(weight, i, j).t(), grad_columns).view(window.sizes()));
        }
        if (weight_grad) {
          grad_weight.select(3, j).select(2, i).copy_(
              at::mm(grad_columns, as_matrix(input_window(input_by_channel, i, j)).t()));
        }
      }
    }
    return {grad_input, grad_weight};
  }
};

struct CpuConvOps {
  at::Tensor dense_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const CheckedConv& c) const {
    if (runs_on_onednn(input) && !weight_outweighs_columns(c, weight)) {
      if (runs_tap_by_tap(c)) return TapByTap(c).forward(input, weight, bias);
      return aten_conv_forward(input, weight, bias, c);
    }
    return dilated_conv2d_gemm_forward(*this, input, weight, bias, c);
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                const at::Tensor& weight, const CheckedConv& c,
                                                                std::array<bool, 3> output_mask) const {
    // oneDNN's weight gradient splits its reduction by thread count: bitwise equal run to run, not across thread
    // counts, which deterministic mode asks of segops' CPU kernels (as the GEMM path below gives).
    if (runs_on_onednn(input) && !at::globalContext().deterministicAlgorithms() &&
        !weight_outweighs_columns(c, weight)) {
      if (runs_tap_by_tap(c)) {
        auto [grad_input, grad_weight] = TapByTap(c).backward(grad, input, weight, output_mask[0], output_mask[1]);
        at::Tensor grad_bias = output_mask[2] ? channel_sums(grad.contiguous()).to(input.scalar_type()) : at::Tensor();
        return {grad_input, grad_weight, grad_bias};
      }
      return aten_conv_backward(grad, input, weight, c, output_mask);
    }
    return dilated_conv2d_gemm_backward(*this, grad, input, weight, c, output_mask);
  }

  void batched_gemm(const at::Tensor& out, const at::Tensor& a, bool transpose_a, const at::Tensor& b, bool transpose_b,
                    bool accumulate) const {
    aten_batched_gemm(out, a, transpose_a, b, transpose_b, accumulate);
  }

  void im2col(const at::Tensor& input, const CheckedConv& c, const at::Tensor& columns, int64_t n, int64_t first_row,
              int64_t rows) const {
    const StridedImage image = strided_image(input);
    const ConvAxis ay = c.ay, ax = c.ax;
    const int64_t width = rows * ax.out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_im2col", [&] {
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      scalar_t* out = columns.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, c.channels * c.taps(), grain_for(width), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t ch = row / c.taps(), i = (row / ax.kernel) % ay.kernel, j = row % ax.kernel;
          const int64_t first = ax.first_output_inside(j), last = std::max(first, ax.last_output_inside(j));
          for (int64_t oy = first_row; oy < first_row + rows; ++oy) {
            scalar_t* dst = out + row * width + (oy - first_row) * ax.out;
            const int64_t y = ay.input_at(oy, i);
            if (y < 0 || y >= ay.in) {
              std::fill(dst, dst + ax.out, scalar_t(0));
              continue;
            }
            std::fill(dst, dst + first, scalar_t(0));
            if (first < last) {
              const scalar_t* src = in + image.offset(n, ch, y, ax.input_at(first, j));
              with_stride(ax.stride * image.stride_w, [&](auto step) {
                for (int64_t ox = first; ox < last; ++ox) dst[ox] = src[(ox - first) * step];
              });
            }
            std::fill(dst + last, dst + ax.out, scalar_t(0));
          }
        }
      });
    });
  }

  void col2im_add(const at::Tensor& columns, const CheckedConv& c, at::Tensor& grad_input, int64_t n, int64_t first_row,
                  int64_t rows) const {
    const ConvAxis ay = c.ay, ax = c.ax;
    const int64_t width = rows * ax.out;
    const RowRange read = input_rows_read(ay, first_row, rows);
    const std::vector<InsideRun> runs = inside_runs(ax);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, columns.scalar_type(), "dilated_conv_col2im", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* col = columns.const_data_ptr<scalar_t>();
      acc_t* grad = grad_input.mutable_data_ptr<acc_t>() + n * c.channels * ay.in * ax.in;
      at::parallel_for(0, c.channels, grain_for(c.taps() * width), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sums(ax.in);
        for (int64_t ch = begin; ch < end; ++ch) {
          for (int64_t y = read.first; y < read.last; ++y) {
            std::fill(sums.begin(), sums.end(), acc_t(0));
            for (int64_t i = 0; i < ay.kernel; ++i) {
              const int64_t oy = ay.output_reading(y, i);
              if (oy < first_row || oy >= first_row + rows) continue;
              for (int64_t j = 0; j < ax.kernel; ++j) {
                const scalar_t* src = col + ((ch * ay.kernel + i) * ax.kernel + j) * width + (oy - first_row) * ax.out;
                const int64_t first = runs[j].first, last = runs[j].last;
                if (first >= last) continue;
                acc_t* dst = sums.data() + ax.input_at(first, j);
                with_stride(ax.stride, [&](auto step) {
                  for (int64_t ox = first; ox < last; ++ox) dst[(ox - first) * step] += static_cast<acc_t>(src[ox]);
                });
              }
            }
            acc_t* grad_row = grad + (ch * ay.in + y) * ax.in;
            for (int64_t x = 0; x < ax.in; ++x) grad_row[x] += sums[x];
          }
        }
      });
    });
  }

  at::Tensor channel_sums(const at::Tensor& grad) const {
    const int64_t batch = grad.size(0), channels = grad.size(1), plane = grad.size(2) * grad.size(3);
    at::Tensor sums = at::empty({channels}, grad.options().dtype(at::toOpMathType(grad.scalar_type())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "dilated_conv_bias_grad", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      acc_t* out = sums.mutable_data_ptr<acc_t>();
      at::parallel_for(0, channels, grain_for(batch * plane), [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch) {
          acc_t sum = 0;
          for (int64_t n = 0; n < batch; ++n) sum += ordered_sum<acc_t>(g + (n * channels + ch) * plane, plane);
          out[ch] = sum;
        }
      });
    });
    return sums;
  }

  at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const CheckedConv& c) const {
    at::Tensor output =
        empty_with_huge_pages(c.output_shape(), input.options().memory_format(conv_memory_format(input)));
    const StridedImage image = strided_image(input), out_image = strided_image(output);
    const ConvAxis ay = c.ay, ax = c.ax;
    const std::vector<InsideRun> runs = inside_runs(ax);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_depthwise", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      const scalar_t* filters = weight.const_data_ptr<scalar_t>();
      const scalar_t* bias_data = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* out = output.mutable_data_ptr<scalar_t>();
      const int64_t plane_work = ay.out * ax.out * c.taps();
      at::parallel_for(0, c.batch * c.channels, grain_for(plane_work), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sums(ax.out);
        std::optional<PaddedInputRows> padded_rows;
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t n = plane / c.channels, ch = plane % c.channels;
          const acc_t b = bias_data != nullptr ? static_cast<acc_t>(bias_data[ch]) : acc_t(0);
          const DepthwisePlane<scalar_t> p{in + image.offset(n, ch, 0, 0),
                                           filters + ch * c.taps(),
                                           out + out_image.offset(n, ch, 0, 0),
                                           image.stride_h,
                                           image.stride_w,
                                           out_image.stride_h,
                                           out_image.stride_w};
          if (image.stride_w == 1 && ax.stride == 1 &&
              depthwise_plane_forward_fast(p, b, ay, ax, runs.data(), sums.data(), padded_rows)) {
            continue;
          }
          with_stride(ax.stride * image.stride_w,
                      [&](auto step) { depthwise_plane_forward(p, b, ay, ax, runs.data(), sums.data(), step); });
        }
      });
    });
    return output;
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_backward(const at::Tensor& grad_in, const at::Tensor& input,
                                                                    const at::Tensor& weight, const CheckedConv& c,
                                                                    std::array<bool, 3> output_mask) const {
    const at::Tensor grad = grad_in.contiguous();  // the loops below read its planes' rows
    at::Tensor grad_input, grad_weight, grad_bias;
    const StridedImage image = strided_image(input);
    const ConvAxis ay = c.ay, ax = c.ax;
    const std::vector<InsideRun> runs = inside_runs(ax);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_depthwise_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      const scalar_t* filters = weight.const_data_ptr<scalar_t>();
      const int64_t out_plane = ay.out * ax.out;
      if (output_mask[0]) {
        grad_input = empty_with_huge_pages(input.sizes(), input.options().memory_format(conv_memory_format(input)));
        const StridedImage gi_image = strided_image(grad_input);
        scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, c.batch * c.channels, grain_for(out_plane * c.taps()), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> sums(ax.in);
          for (int64_t plane = begin; plane < end; ++plane) {
            const int64_t n = plane / c.channels, ch = plane % c.channels;
            const scalar_t* filter = filters + ch * c.taps();
            for (int64_t y = 0; y < ay.in; ++y) {
              std::fill(sums.begin(), sums.end(), acc_t(0));
              for (int64_t i = 0; i < ay.kernel; ++i) {
                const int64_t oy = ay.output_reading(y, i);
                if (oy < 0) continue;
                for (int64_t j = 0; j < ax.kernel; ++j) {
                  const acc_t w = static_cast<acc_t>(filter[i * ax.kernel + j]);
                  const scalar_t* src = g + plane * out_plane + oy * ax.out;
                  const int64_t first = runs[j].first, last = runs[j].last;
                  if (first >= last) continue;
                  acc_t* dst = sums.data() + ax.input_at(first, j);
                  with_stride(ax.stride, [&](auto step) {
                    for (int64_t ox = first; ox < last; ++ox) {
                      dst[(ox - first) * step] += w * static_cast<acc_t>(src[ox]);
                    }
                  });
                }
              }
              store_row(gi + gi_image.offset(n, ch, y, 0), gi_image.stride_w, ax.in,
                        [&](int64_t x) { return static_cast<scalar_t>(sums[x]); });
            }
          }
        });
      }
      if (output_mask[1]) {
        grad_weight = at::empty(weight.sizes(), weight.options());
        scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, c.channels, grain_for(c.batch * out_plane * c.taps()), [&](int64_t begin, int64_t end) {
          for (int64_t ch = begin; ch < end; ++ch) {
            for (int64_t i = 0; i < ay.kernel; ++i) {
              for (int64_t j = 0; j < ax.kernel; ++j) {
                const int64_t first = runs[j].first, last = runs[j].last;
                acc_t sum = 0;
                for (int64_t n = 0; n < c.batch; ++n) {
                  if (first >= last) break;
                  for (int64_t oy = ay.first_output_inside(i); oy < ay.last_output_inside(i); ++oy) {
                    const scalar_t* grad_row = g + ((n * c.channels + ch) * ay.out + oy) * ax.out;
                    const scalar_t* in_run = in + image.offset(n, ch, ay.input_at(oy, i), ax.input_at(first, j));
                    with_stride(ax.stride * image.stride_w, [&](auto step) {
                      sum += ordered_dot<acc_t>(grad_row + first, in_run, step, last - first);
                    });
                  }
                }
                gw[ch * c.taps() + i * ax.kernel + j] = static_cast<scalar_t>(sum);
              }
            }
          }
        });
      }
    });
    if (output_mask[2]) grad_bias = channel_sums(grad).to(input.scalar_type());
    return {grad_input, grad_weight, grad_bias};
  }
};

at::Tensor dilated_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return dilated_conv2d_forward(CpuConvOps{}, input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  return dilated_conv2d_backward(CpuConvOps{}, grad, input, weight, stride, padding, dilation, groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("dilated_conv2d", &dilated_conv2d_forward_cpu);
  m.impl("_dilated_conv2d_backward", &dilated_conv2d_backward_cpu);
}

}  // namespace segops
