#pragma once
// Dilated-convolution GPU kernels and the backend (LaunchConvOps) that dilated_conv_gemm.h's drivers call, shared by
// dilated_conv_cuda.cu (CudaLaunch, cuBLAS) and the test-only host emulation (EmulatedLaunch, ATen's GEMMs).
// - The general case is ATen's convolution, F.conv2d's own path: cuDNN's implicit GEMM (no column buffer, one call,
//   its TF32, benchmark and determinism settings). Under torch.use_deterministic_algorithms (or
//   cudnn.deterministic) the backward is segops' instead: cuDNN's deterministic dilated data gradient is more than
//   10x slower (pytorch#28777). That is im2col + one strided-batched GEMM for all groups + col2im, per chunk of
//   output rows, with TF32 as cuDNN's switch says; no floating-point atomics.
// - One thread per element: im2col per column entry; col2im per input element, a gather (col2im_sum) added to the
//   gradient; depthwise forward per output element; depthwise input gradient per input element, a gather;
//   depthwise weight gradient per (channel, tap, image, output column) a partial sum (a warp reads along rows),
//   then per (channel, tap) the partials summed in order: an ordered reduction. The bias gradient: ATen's sum over (N,
//   H, W), deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "dilated_conv/dilated_conv.h"
#include "dilated_conv/dilated_conv_checks.h"
#include "dilated_conv/dilated_conv_gemm.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_im2col_kernel(int64_t total, const scalar_t* __restrict__ input, StridedImage image, ConvAxis ay,
                               ConvAxis ax, int64_t n, int64_t first_row, int64_t rows,
                               scalar_t* __restrict__ columns) {
  const index_t width = static_cast<index_t>(rows * ax.out), out_w = static_cast<index_t>(ax.out);
  const index_t kernel_h = static_cast<index_t>(ay.kernel), kernel_w = static_cast<index_t>(ax.kernel);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t row = index / width, column = index % width;
    columns[index] = im2col_value(input, image, ay, ax, n, row / (kernel_h * kernel_w), (row / kernel_w) % kernel_h,
                                  row % kernel_w, first_row + column / out_w, column % out_w);
  }
}

// grad_image: image n's [C, H, W] gradient (acc_t, contiguous); threads cover input rows [first_y, first_y + total /
// (C * W)).
template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_col2im_kernel(int64_t total, const scalar_t* __restrict__ columns, ConvAxis ay, ConvAxis ax,
                               int64_t first_row, int64_t rows, int64_t first_y, int64_t read_rows,
                               at::opmath_type<scalar_t>* __restrict__ grad_image) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t width = static_cast<index_t>(ax.in), row_count = static_cast<index_t>(read_rows);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t x = index % width;
    const int64_t y = first_y + (index / width) % row_count;
    const index_t c = index / (width * row_count);
    grad_image[(c * ay.in + y) * ax.in + x] += col2im_sum<acc_t, index_t>(columns, ay, ax, c, y, x, first_row, rows);
  }
}

// kChannelFastest (channels_last tensors): threads walk (n, oy, ox, c), so that a warp reads consecutive channels and
// writes them into the channels_last output; otherwise (n, c, oy, ox), the contiguous output's order. The output is
// written through its strides (out_image) either way.
template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_depthwise_kernel(int64_t total, const scalar_t* __restrict__ input, StridedImage image,
                                  const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias, ConvAxis ay,
                                  ConvAxis ax, int64_t channels, StridedImage out_image,
                                  scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t out_w = static_cast<index_t>(ax.out), out_h = static_cast<index_t>(ay.out);
  const index_t channel_count = static_cast<index_t>(channels);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t pixel = kChannelFastest ? index / channel_count : index % (out_w * out_h);
    const index_t ox = pixel % out_w;
    const index_t oy = pixel / out_w % out_h;
    const index_t c = kChannelFastest ? index % channel_count : index / (out_w * out_h) % channel_count;
    const index_t n = index / (out_w * out_h * channel_count);
    // Channel-fastest walks read the [kH, kW, C] transpose of the weight (consecutive channels, consecutive threads).
    const acc_t sum = kChannelFastest ? depthwise_sum<acc_t>(input, image, weight + c, channels, ay, ax, n, c, oy, ox)
                                      : depthwise_sum<acc_t>(input, image, weight + c * ay.kernel * ax.kernel, 1, ay,
                                                             ax, n, c, oy, ox);
    output[out_image.offset(n, c, oy, ox)] =
        static_cast<scalar_t>(sum + (bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0)));
  }
}

// The input gradient, one thread per input element, walked and written as the depthwise forward walks its output
// (kChannelFastest: grad and grad_input channels_last, the weight as its [kH, kW, C] transpose).
template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_depthwise_input_grad_kernel(int64_t total, const scalar_t* __restrict__ grad, StridedImage grad_image,
                                             const scalar_t* __restrict__ weight, ConvAxis ay, ConvAxis ax,
                                             int64_t channels, StridedImage grad_input_image,
                                             scalar_t* __restrict__ grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t width = static_cast<index_t>(ax.in), height = static_cast<index_t>(ay.in);
  const index_t channel_count = static_cast<index_t>(channels);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t pixel = kChannelFastest ? index / channel_count : index % (width * height);
    const index_t x = pixel % width;
    const index_t y = pixel / width % height;
    const index_t c = kChannelFastest ? index % channel_count : index / (width * height) % channel_count;
    const index_t n = index / (width * height * channel_count);
    const acc_t sum =
        kChannelFastest
            ? depthwise_input_grad<acc_t, index_t>(grad, grad_image, weight + c, channels, ay, ax, n, c, y, x)
            : depthwise_input_grad<acc_t, index_t>(grad, grad_image, weight + c * ay.kernel * ax.kernel, 1, ay, ax, n,
                                                   c, y, x);
    grad_input[grad_input_image.offset(n, c, y, x)] = static_cast<scalar_t>(sum);
  }
}

// Where partial (channel c, tap, column k of N * Wo) lies: [C, taps, N * Wo] (consecutive columns, consecutive
// threads) or, kChannelFastest, [taps, N * Wo, C] (consecutive channels, for channels_last grad and input).
template <bool kChannelFastest>
struct PartialsLayout {
  int64_t channels, taps, columns;

  __device__ int64_t offset(int64_t c, int64_t tap, int64_t column) const {
    return kChannelFastest ? (tap * columns + column) * channels + c : (c * taps + tap) * columns + column;
  }
};

// partials[layout.offset(c, tap, n * Wo + ox)]: the weight gradient's share of one output column
// (depthwise_weight_grad_column), one thread each, in the layout's order.
template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_depthwise_weight_partial_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                                 StridedImage grad_image, const scalar_t* __restrict__ input,
                                                 StridedImage image, ConvAxis ay, ConvAxis ax, int64_t batch,
                                                 int64_t channels, at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t columns = static_cast<index_t>(batch * ax.out), out_w = static_cast<index_t>(ax.out);
  const index_t kernel_w = static_cast<index_t>(ax.kernel), taps = static_cast<index_t>(ay.kernel * ax.kernel);
  const index_t channel_count = static_cast<index_t>(channels);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t c = kChannelFastest ? index % channel_count : index / (columns * taps);
    const index_t rest = kChannelFastest ? index / channel_count : index % (columns * taps);  // tap * columns + column
    const index_t column = rest % columns, tap = rest / columns;
    partials[index] = depthwise_weight_grad_column<acc_t, index_t>(
        grad, grad_image, input, image, ay, ax, column / out_w, c, column % out_w, tap / kernel_w, tap % kernel_w);
  }
}

// grad_weight[c * taps + tap] = the sum of that (c, tap)'s partials over the columns, in column order: the same
// order, so the same bits, in either layout. Threads take (c, tap) in the layout's order (consecutive channels read
// consecutive partials when kChannelFastest).
template <typename scalar_t, bool kChannelFastest>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    dilated_conv_ordered_sum_kernel(int64_t total, const at::opmath_type<scalar_t>* __restrict__ partials,
                                    PartialsLayout<kChannelFastest> layout, scalar_t* __restrict__ sums) {
  using acc_t = at::opmath_type<scalar_t>;
  SEGOPS_KERNEL_LOOP(index, total) {
    const int64_t c = kChannelFastest ? index % layout.channels : index / layout.taps;
    const int64_t tap = kChannelFastest ? index / layout.channels : index % layout.taps;
    const int64_t first = layout.offset(c, tap, 0), step = layout.offset(c, tap, 1) - first;
    acc_t sum = 0;
    for (int64_t k = 0; k < layout.columns; ++k) sum += partials[first + k * step];
    sums[c * layout.taps + tap] = static_cast<scalar_t>(sum);
  }
}

// ATen's GEMMs, one per group: the emulation's (the CUDA launcher passes CublasBatchedGemm).
struct AtenBatchedGemm {
  void operator()(const at::Tensor& out, const at::Tensor& a, bool transpose_a, const at::Tensor& b, bool transpose_b,
                  bool accumulate) const {
    aten_batched_gemm(out, a, transpose_a, b, transpose_b, accumulate);
  }
};

template <class Launch, class Gemm>
struct LaunchConvOps {
  Launch launch;
  Gemm gemm;
  bool deterministic;  // the backward must be: segops' GEMMs rather than cuDNN's

  at::Tensor dense_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const CheckedConv& c) const {
    return aten_conv_forward(input, weight, bias, c);  // every cuDNN forward algorithm is deterministic
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                const at::Tensor& weight, const CheckedConv& c,
                                                                std::array<bool, 3> output_mask) const {
    if (deterministic) return dilated_conv2d_gemm_backward(*this, grad, input, weight, c, output_mask);
    return aten_conv_backward(grad, input, weight, c, output_mask);
  }

  void batched_gemm(const at::Tensor& out, const at::Tensor& a, bool transpose_a, const at::Tensor& b, bool transpose_b,
                    bool accumulate) const {
    gemm(out, a, transpose_a, b, transpose_b, accumulate);
  }

  void im2col(const at::Tensor& input, const CheckedConv& c, const at::Tensor& columns, int64_t n, int64_t first_row,
              int64_t rows) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_im2col", [&] {
      with_index_type(
          {input, columns},
          [&](auto index) {
            launch(columns.numel(), dilated_conv_im2col_kernel<scalar_t, decltype(index)>, columns.numel(),
                   input.const_data_ptr<scalar_t>(), strided_image(input), c.ay, c.ax, n, first_row, rows,
                   columns.mutable_data_ptr<scalar_t>());
          },
          c.axes_fit_32bit());
    });
  }

  void col2im_add(const at::Tensor& columns, const CheckedConv& c, at::Tensor& grad_input, int64_t n, int64_t first_row,
                  int64_t rows) const {
    const RowRange read = input_rows_read(c.ay, first_row, rows);
    const int64_t total = c.channels * std::max<int64_t>(0, read.last - read.first) * c.ax.in;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, columns.scalar_type(), "dilated_conv_col2im", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_index_type(
          {columns, grad_input},
          [&](auto index) {
            launch(total, dilated_conv_col2im_kernel<scalar_t, decltype(index)>, total,
                   columns.const_data_ptr<scalar_t>(), c.ay, c.ax, first_row, rows, read.first, read.last - read.first,
                   grad_input.mutable_data_ptr<acc_t>() + n * c.channels * c.ay.in * c.ax.in);
          },
          c.axes_fit_32bit());
    });
  }

  at::Tensor channel_sums(const at::Tensor& grad) const {
    return grad.sum({0, 2, 3}, /*keepdim=*/false, at::toOpMathType(grad.scalar_type()));
  }

  // channels_last tensors are walked channel-fastest (a warp reads and writes consecutive channels), except where the
  // memory tracer's test plants the output's order instead.
  static bool walk_channel_fastest(const CheckedConv& c, at::MemoryFormat format) {
    return c.channels > 1 && format == at::MemoryFormat::ChannelsLast && !force_output_thread_order();
  }

  at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const CheckedConv& c) const {
    const at::MemoryFormat format = conv_memory_format(input);
    at::Tensor output = at::empty(c.output_shape(), input.options().memory_format(format));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_depthwise", [&] {
      const bool channel_fastest = walk_channel_fastest(c, format);
      // [C, 1, kH, kW] -> [kH, kW, C] for the channel-fastest walk (a few KB).
      const at::Tensor filters = channel_fastest ? weight.permute({2, 3, 0, 1}).contiguous() : weight;
      with_index_type(
          {input, output},
          [&](auto index) {
            using index_t = decltype(index);
            launch(output.numel(),
                   channel_fastest ? dilated_conv_depthwise_kernel<scalar_t, index_t, true>
                                   : dilated_conv_depthwise_kernel<scalar_t, index_t, false>,
                   output.numel(), input.const_data_ptr<scalar_t>(), strided_image(input),
                   filters.const_data_ptr<scalar_t>(), bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr,
                   c.ay, c.ax, c.channels, strided_image(output), output.mutable_data_ptr<scalar_t>());
          },
          c.axes_fit_32bit());
    });
    return output;
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_backward(const at::Tensor& grad_in, const at::Tensor& input,
                                                                    const at::Tensor& weight, const CheckedConv& c,
                                                                    std::array<bool, 3> output_mask) const {
    const at::MemoryFormat format = conv_memory_format(input);
    const bool channel_fastest = walk_channel_fastest(c, format);
    // The gradient in the input's layout (autograd's is the output's, which is the input's), read in place.
    const at::Tensor grad = grad_in.contiguous(format);
    at::Tensor grad_input, grad_weight, grad_bias;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dilated_conv_depthwise_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (output_mask[0]) {
        grad_input = at::empty(input.sizes(), input.options().memory_format(format));
        const at::Tensor filters = channel_fastest ? weight.permute({2, 3, 0, 1}).contiguous() : weight;
        with_index_type(
            {grad, grad_input},
            [&](auto index) {
              using index_t = decltype(index);
              launch(grad_input.numel(),
                     channel_fastest ? dilated_conv_depthwise_input_grad_kernel<scalar_t, index_t, true>
                                     : dilated_conv_depthwise_input_grad_kernel<scalar_t, index_t, false>,
                     grad_input.numel(), grad.const_data_ptr<scalar_t>(), strided_image(grad),
                     filters.const_data_ptr<scalar_t>(), c.ay, c.ax, c.channels, strided_image(grad_input),
                     grad_input.mutable_data_ptr<scalar_t>());
            },
            c.axes_fit_32bit());
      }
      if (output_mask[1]) {
        const int64_t columns = c.batch * c.ax.out;
        at::Tensor partials =
            at::empty({c.channels * c.taps() * columns}, input.options().dtype(at::toOpMathType(input.scalar_type())));
        with_index_type(
            {grad, input, partials},
            [&](auto index) {
              using index_t = decltype(index);
              launch(partials.numel(),
                     channel_fastest ? dilated_conv_depthwise_weight_partial_kernel<scalar_t, index_t, true>
                                     : dilated_conv_depthwise_weight_partial_kernel<scalar_t, index_t, false>,
                     partials.numel(), grad.const_data_ptr<scalar_t>(), strided_image(grad),
                     input.const_data_ptr<scalar_t>(), strided_image(input), c.ay, c.ax, c.batch, c.channels,
                     partials.mutable_data_ptr<acc_t>());
            },
            c.axes_fit_32bit());
        grad_weight = at::empty(weight.sizes(), weight.options());
        if (channel_fastest) {
          launch(grad_weight.numel(), dilated_conv_ordered_sum_kernel<scalar_t, true>, grad_weight.numel(),
                 partials.const_data_ptr<acc_t>(), PartialsLayout<true>{c.channels, c.taps(), columns},
                 grad_weight.mutable_data_ptr<scalar_t>());
        } else {
          launch(grad_weight.numel(), dilated_conv_ordered_sum_kernel<scalar_t, false>, grad_weight.numel(),
                 partials.const_data_ptr<acc_t>(), PartialsLayout<false>{c.channels, c.taps(), columns},
                 grad_weight.mutable_data_ptr<scalar_t>());
        }
      }
    });
    // The bias gradient sums a contiguous grad, so that its bits depend on neither argument's layout (ATen's
    // reduction order follows the layout).
    if (output_mask[2]) grad_bias = channel_sums(grad_in.contiguous()).to(input.scalar_type());
    return {grad_input, grad_weight, grad_bias};
  }
};

template <class Launch, class Gemm = AtenBatchedGemm>
at::Tensor dilated_conv2d_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         Gemm gemm = {}) {
  return dilated_conv2d_forward(LaunchConvOps<Launch, Gemm>{launch, gemm, false}, input, weight, bias, stride, padding,
                                dilation, groups);
}

template <class Launch, class Gemm = AtenBatchedGemm>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward_launch(
    const Launch& launch, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask, bool deterministic, Gemm gemm = {}) {
  return dilated_conv2d_backward(LaunchConvOps<Launch, Gemm>{launch, gemm, deterministic}, grad, input, weight, stride,
                                 padding, dilation, groups, output_mask);
}

}  // namespace segops
