#pragma once
// dilated_conv2d's drivers: the general case as im2col + GEMM, the depthwise case handed to the backend's direct
// kernels. The CPU (dilated_conv_cpu.cpp) runs every case here; the GPU (dilated_conv_kernels.cuh) runs the general
// case on ATen's convolution (cuDNN) but for the backward under torch.use_deterministic_algorithms, which is the GEMM
// backward below. `Ops` is the backend:
//   dense_forward(input, weight, bias, checked), dense_backward(grad, input, weight, checked, mask): the general case;
//   im2col(input, checked, columns, n, first_row, rows): the [C * kH * kW, rows * Wo] columns of image n's output rows
//     [first_row, first_row + rows);
//   col2im_add(columns, checked, grad_input, n, first_row, rows): grad_input[n] += col2im(columns), a gather;
//   batched_gemm(out, a, transpose_a, b, transpose_b, accumulate): out[g] (+)= op(a[g]) @ op(b[g]) for every group g
//     (3-D views, unit stride along their last dimension): aten_batched_gemm, or one strided-batched cuBLAS call;
//   channel_sums(grad): [C_out] sums over (n, y, x) in a fixed order (the bias gradient);
//   depthwise_forward(input, weight, bias, checked), depthwise_backward(grad, input, weight, checked, mask).
// Memory: the column buffer holds at most kColumnBudget elements (or one output row's columns, if larger): an image
// is processed in chunks of output rows. Each image and chunk adds to the gradients in a fixed order, and a GEMM
// makes no atomic adds, so the backward is deterministic.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "dilated_conv/dilated_conv_checks.h"

namespace segops {

// The memory format of the op's output and input gradient: the input's, so that channels_last stays channels_last
// through a network, as F.conv2d keeps it (which also goes channels_last for a channels_last weight alone). The fake
// kernels (segops/ops/_dilated_conv_meta.py) apply the same rule.
inline at::MemoryFormat conv_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format();
}

// 2^23 elements: 32 MiB of float32 columns, however large the input (a [1, 2048, 128, 256] input with a 3x3 kernel
// would need 2.4 GB of columns at once).
constexpr int64_t kColumnBudget = int64_t(1) << 23;

inline int64_t column_rows_per_chunk(const CheckedConv& c) {
  const int64_t row_elements = std::max<int64_t>(1, c.channels * c.taps() * c.ax.out);
  return std::clamp<int64_t>(kColumnBudget / row_elements, 1, c.ay.out);
}

// The [groups, C_out / groups, rows * Wo] view of output rows [first_row, first_row + rows) of image n.
inline at::Tensor output_rows(const at::Tensor& output, const CheckedConv& c, int64_t n, int64_t first_row,
                              int64_t rows) {
  return output[n]
      .view({c.groups, c.group_out_channels(), c.ay.out * c.ax.out})
      .narrow(2, first_row * c.ax.out, rows * c.ax.out);
}

// out[g] = op(a[g]) @ op(b[g]), or out[g] += that (accumulate), for each group g, through ATen (oneDNN/MKL on the CPU):
// one GEMM per group. out may be of a's accumulation type (float for float16/bfloat16 operands) when accumulating.
inline void aten_batched_gemm(const at::Tensor& out, const at::Tensor& a, bool transpose_a, const at::Tensor& b,
                              bool transpose_b, bool accumulate) {
  for (int64_t g = 0; g < out.size(0); ++g) {
    const at::Tensor a_g = transpose_a ? a[g].t() : a[g], b_g = transpose_b ? b[g].t() : b[g];
    at::Tensor out_g = out[g];
    if (!accumulate) {
      at::mm_out(out_g, a_g, b_g);
    } else if (out.scalar_type() == a.scalar_type()) {
      out_g.addmm_(a_g, b_g);
    } else {
      out_g.add_(at::mm(a_g, b_g));
    }
  }
}

// The general case on ATen's convolution, F.conv2d's own path (cuDNN on the GPU, oneDNN on the CPU), in the input's
// memory format as the op's (and its fake kernel's) output is; ATen also picks channels_last for a channels_last
// weight, F.conv2d's rule.
inline at::Tensor aten_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const CheckedConv& c) {
  return at::convolution(input, weight, bias, {c.ay.stride, c.ax.stride}, {c.ay.pad, c.ax.pad},
                         {c.ay.dilation, c.ax.dilation}, /*transposed=*/false, {0, 0}, c.groups)
      .contiguous(conv_memory_format(input));
}

// Its backward: (grad_input, grad_weight, grad_bias), each undefined where output_mask is false.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> aten_conv_backward(const at::Tensor& grad,
                                                                         const at::Tensor& input,
                                                                         const at::Tensor& weight, const CheckedConv& c,
                                                                         std::array<bool, 3> output_mask) {
  const int64_t bias_size = c.out_channels;
  const at::OptionalIntArrayRef bias_sizes =
      output_mask[2] ? at::OptionalIntArrayRef(at::IntArrayRef(&bias_size, 1)) : at::OptionalIntArrayRef();
  auto [grad_input, grad_weight, grad_bias] =
      at::convolution_backward(grad, input, weight, bias_sizes, {c.ay.stride, c.ax.stride}, {c.ay.pad, c.ax.pad},
                               {c.ay.dilation, c.ax.dilation}, /*transposed=*/false, {0, 0}, c.groups, output_mask);
  return {output_mask[0] ? grad_input.contiguous(conv_memory_format(input)) : grad_input,
          output_mask[1] ? grad_weight.contiguous() : grad_weight, grad_bias};
}

template <class Ops>
at::Tensor dilated_conv2d_gemm_forward(const Ops& ops, const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, const CheckedConv& c) {
  at::Tensor output = at::empty(c.output_shape(), input.options());
  const int64_t chunk = column_rows_per_chunk(c);
  const int64_t column_rows = c.group_channels() * c.taps();
  at::Tensor column_buffer = at::empty({c.channels * c.taps() * chunk * c.ax.out}, input.options());
  const at::Tensor filters = weight.contiguous().view({c.groups, c.group_out_channels(), column_rows});
  for (int64_t n = 0; n < c.batch; ++n) {
    for (int64_t first_row = 0; first_row < c.ay.out; first_row += chunk) {
      const int64_t rows = std::min(chunk, c.ay.out - first_row);
      at::Tensor columns = column_buffer.narrow(0, 0, c.channels * c.taps() * rows * c.ax.out)
                               .view({c.groups, column_rows, rows * c.ax.out});
      ops.im2col(input, c, columns, n, first_row, rows);
      at::Tensor out = output_rows(output, c, n, first_row, rows);
      for (int64_t g = 0; g < c.groups; ++g) {
        at::Tensor out_g = out[g];
        if (bias.has_value()) {
          const at::Tensor bias_g = bias->narrow(0, g * c.group_out_channels(), c.group_out_channels());
          at::addmm_out(out_g, bias_g.unsqueeze(1).expand({c.group_out_channels(), rows * c.ax.out}), filters[g],
                        columns[g]);
        } else {
          at::mm_out(out_g, filters[g], columns[g]);
        }
      }
    }
  }
  return output;
}

// Returns (grad_input, grad_weight, grad_bias), each undefined where output_mask is false.
template <class Ops>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_gemm_backward(const Ops& ops, const at::Tensor& grad,
                                                                            const at::Tensor& input,
                                                                            const at::Tensor& weight,
                                                                            const CheckedConv& c,
                                                                            std::array<bool, 3> output_mask) {
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  const int64_t chunk = column_rows_per_chunk(c);
  const int64_t column_rows = c.group_channels() * c.taps();
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor filters = weight.contiguous().view({c.groups, c.group_out_channels(), column_rows});
  // Accumulated in acc_t across images and chunks (float for float16/bfloat16), converted once.
  at::Tensor grad_input, grad_weight, column_buffer, column_grad_buffer;
  if (output_mask[0]) {
    grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
    column_grad_buffer = at::empty({c.channels * c.taps() * chunk * c.ax.out}, input.options());
  }
  if (output_mask[1]) {
    grad_weight = at::zeros({c.groups, c.group_out_channels(), column_rows}, input.options().dtype(acc_type));
    column_buffer = at::empty({c.channels * c.taps() * chunk * c.ax.out}, input.options());
  }
  for (int64_t n = 0; n < c.batch && (output_mask[0] || output_mask[1]); ++n) {
    for (int64_t first_row = 0; first_row < c.ay.out; first_row += chunk) {
      const int64_t rows = std::min(chunk, c.ay.out - first_row);
      const int64_t column_elements = c.channels * c.taps() * rows * c.ax.out;
      const at::Tensor grad_rows = output_rows(grad_c, c, n, first_row, rows);
      if (output_mask[1]) {
        const at::Tensor columns = column_buffer.narrow(0, 0, column_elements).view({c.groups, column_rows, -1});
        ops.im2col(input, c, columns, n, first_row, rows);
        ops.batched_gemm(grad_weight, grad_rows, false, columns, true, /*accumulate=*/true);
      }
      if (output_mask[0]) {
        const at::Tensor column_grad =
            column_grad_buffer.narrow(0, 0, column_elements).view({c.groups, column_rows, -1});
        ops.batched_gemm(column_grad, filters, true, grad_rows, false, /*accumulate=*/false);
        ops.col2im_add(column_grad, c, grad_input, n, first_row, rows);
      }
    }
  }
  at::Tensor grad_bias = output_mask[2] ? ops.channel_sums(grad_c).to(input.scalar_type()) : at::Tensor();
  if (grad_input.defined()) grad_input = grad_input.to(input.scalar_type());
  if (grad_weight.defined()) grad_weight = grad_weight.view(weight.sizes()).to(input.scalar_type());
  return {grad_input, grad_weight, grad_bias};
}

template <class Ops>
at::Tensor dilated_conv2d_forward(const Ops& ops, const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias_arg, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const CheckedConv c =
      checked_dilated_conv2d("dilated_conv2d", input, weight, bias_arg, stride, padding, dilation, groups);
  // The kernels read bias through a raw pointer: a strided or expanded view must become dense first.
  const std::optional<at::Tensor> bias =
      bias_arg.has_value() ? std::optional<at::Tensor>(bias_arg->contiguous()) : std::nullopt;
  const at::MemoryFormat format = conv_memory_format(input);
  if (c.batch == 0 || c.out_channels == 0 || c.channels == 0) {
    // Nothing to sum: the bias, or zeros.
    // at::zeros ignores a TensorOptions memory format: allocate in the format, then zero.
    at::Tensor output = at::empty(c.output_shape(), input.options().memory_format(format)).zero_();
    if (bias.has_value() && output.numel() > 0) output.add_(bias->view({1, -1, 1, 1}));
    return output;
  }
  // The depthwise kernels write the output in `format` themselves; the GEMM path's is contiguous.
  if (c.depthwise) return ops.depthwise_forward(input, weight.contiguous(), bias, c);
  return ops.dense_forward(input, weight, bias, c).contiguous(format);
}

// The backward op's results: grads that output_mask leaves out are empty tensors ([0]) rather than undefined, so the
// schema's Tensor outputs stay tensors.
template <class Ops>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward(
    const Ops& ops, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const CheckedConv c = checked_dilated_conv2d("_dilated_conv2d_backward", input, weight, std::nullopt, stride, padding,
                                               dilation, groups);
  check_dilated_conv2d_grad(grad, input, c);
  const at::MemoryFormat format = conv_memory_format(input);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  if (c.batch == 0 || c.out_channels == 0 || c.channels == 0) {
    grads = {at::empty(input.sizes(), input.options().memory_format(format)).zero_(),
             at::zeros(weight.sizes(), weight.options()), at::zeros({c.out_channels}, input.options())};
    if (output_mask[2] && grad.numel() > 0) {
      std::get<2>(grads) = ops.channel_sums(grad.contiguous()).to(input.scalar_type());
    }
  } else if (c.depthwise) {
    // The grad in whatever layout autograd gives it: each backend reads it in the layout its kernels walk.
    grads = ops.depthwise_backward(grad, input, weight.contiguous(), c, output_mask);
  } else {
    grads = ops.dense_backward(grad, input, weight, c, output_mask);
    if (output_mask[0]) std::get<0>(grads) = std::get<0>(grads).contiguous(format);
  }
  // A fresh empty tensor each: outputs must not alias.
  const auto none = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? std::get<0>(grads) : none(), output_mask[1] ? std::get<1>(grads) : none(),
          output_mask[2] ? std::get<2>(grads) : none()};
}

}  // namespace segops
