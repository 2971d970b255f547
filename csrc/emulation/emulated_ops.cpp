// Test-only: the GPU kernels of every op, compiled for the host and launched by EmulatedLaunch over a grid the
// caller picks. Registered as torch.ops.segops_emulation.<op>(..., grid, block) in segops._emulation (built
// with SEGOPS_BUILD_EMULATION=1); tests compare them with the CPU path. Not part of the public API. Built with
// SEGOPS_MEMTRACE (all but the sanitizer builds), memtrace_begin/memtrace_end record every global access of the
// launches between them (emulation/memory_trace.h). Built with SEGOPS_CONCURRENT_EMULATION (scripts/tsan.sh), each
// launch runs on several OS threads under ThreadSanitizer (common/emulation.h).
#define SEGOPS_EMULATION

#include <torch/library.h>

#include <string>

#include "dense_crf/dense_crf_kernels.cuh"
#include "dilated_conv/dilated_conv_kernels.cuh"
#include "flow_warp/flow_warp_kernels.cuh"
#include "max_unpool/max_unpool_kernels.cuh"
#include "ps_roi/ps_roi_kernels.cuh"
#include "roi_align/roi_align_kernels.cuh"
#include "roi_pool/roi_pool_kernels.cuh"

namespace segops::emulation {
namespace {

Dim3 to_dim3(const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK(!sizes.empty() && sizes.size() <= 3, "segops_emulation: ", name, " must have 1 to 3 dimensions, got ",
              sizes);
  unsigned int dims[3] = {1, 1, 1};
  for (size_t i = 0; i < sizes.size(); ++i) {
    TORCH_CHECK(sizes[i] >= 1 && sizes[i] <= 65535, "segops_emulation: ", name,
                " dimensions must be in [1, 65535], got ", sizes);
    dims[i] = static_cast<unsigned int>(sizes[i]);
  }
  return {dims[0], dims[1], dims[2]};
}

EmulatedLaunch launch_of(at::IntArrayRef grid, at::IntArrayRef block) {
  return {to_dim3("grid", grid), to_dim3("block", block)};
}

at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                     int64_t pooled_w, int64_t sampling_ratio, bool aligned, at::IntArrayRef grid,
                     at::IntArrayRef block) {
  return roi_align_forward_launch(launch_of(grid, block), input, rois, spatial_scale, pooled_h, pooled_w,
                                  sampling_ratio, aligned);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                              int64_t pooled_w, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                              int64_t sampling_ratio, bool aligned, bool deterministic, at::IntArrayRef grid,
                              at::IntArrayRef block) {
  return roi_align_backward_launch(launch_of(grid, block), grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                                   channels, height, width, sampling_ratio, aligned, deterministic);
}

at::Tensor multi_scale_roi_align(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                 at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned, at::IntArrayRef grid, at::IntArrayRef block) {
  return multi_scale_roi_align_forward_launch(launch_of(grid, block), features, rois, levels, spatial_scales, pooled_h,
                                              pooled_w, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                                       const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                       int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                                       int64_t channels, at::IntArrayRef heights,
                                                       at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                                       bool deterministic, at::IntArrayRef grid,
                                                       at::IntArrayRef block) {
  return multi_scale_roi_align_backward_launch(launch_of(grid, block), grad, rois, levels, spatial_scales, pooled_h,
                                               pooled_w, batch_size, channels, heights, widths, sampling_ratio, aligned,
                                               deterministic);
}

std::tuple<at::Tensor, at::Tensor> roi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                            int64_t pooled_h, int64_t pooled_w, at::IntArrayRef grid,
                                            at::IntArrayRef block) {
  return roi_pool_forward_launch(launch_of(grid, block), input, rois, spatial_scale, pooled_h, pooled_w);
}

at::Tensor roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                             double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                             int64_t channels, int64_t height, int64_t width, bool deterministic, at::IntArrayRef grid,
                             at::IntArrayRef block) {
  return roi_pool_backward_launch(launch_of(grid, block), grad, rois, argmax, spatial_scale, pooled_h, pooled_w,
                                  batch_size, channels, height, width, deterministic);
}

at::Tensor ps_roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                        int64_t pooled_w, int64_t sampling_ratio, at::IntArrayRef grid, at::IntArrayRef block) {
  return ps_roi_align_forward_launch(launch_of(grid, block), input, rois, spatial_scale, pooled_h, pooled_w,
                                     sampling_ratio);
}

at::Tensor ps_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                                 int64_t pooled_w, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                 int64_t sampling_ratio, bool deterministic, at::IntArrayRef grid,
                                 at::IntArrayRef block) {
  return ps_roi_align_backward_launch(launch_of(grid, block), grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                                      channels, height, width, sampling_ratio, deterministic);
}

at::Tensor ps_roi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                       int64_t pooled_w, at::IntArrayRef grid, at::IntArrayRef block) {
  return ps_roi_pool_forward_launch(launch_of(grid, block), input, rois, spatial_scale, pooled_h, pooled_w);
}

at::Tensor ps_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                                int64_t pooled_w, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                bool deterministic, at::IntArrayRef grid, at::IntArrayRef block) {
  return ps_roi_pool_backward_launch(launch_of(grid, block), grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                                     channels, height, width, deterministic);
}

at::Tensor flow_warp(const at::Tensor& feature, const at::Tensor& flow, const std::optional<at::Tensor>& scale,
                     at::IntArrayRef grid, at::IntArrayRef block) {
  return flow_warp_forward_launch(launch_of(grid, block), feature, flow, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_warp_backward(const at::Tensor& grad, const at::Tensor& feature,
                                                                  const at::Tensor& flow,
                                                                  const std::optional<at::Tensor>& scale,
                                                                  bool deterministic, at::IntArrayRef grid,
                                                                  at::IntArrayRef block) {
  return flow_warp_backward_launch(launch_of(grid, block), grad, feature, flow, scale, deterministic);
}

at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices, int64_t output_height, int64_t output_width,
                        at::IntArrayRef grid, at::IntArrayRef block) {
  return max_unpool2d_forward_launch(launch_of(grid, block), input, indices, output_height, output_width);
}

at::Tensor max_unpool2d_backward(const at::Tensor& grad, const at::Tensor& indices, at::IntArrayRef grid,
                                 at::IntArrayRef block) {
  return max_unpool2d_backward_launch(launch_of(grid, block), grad, indices);
}

at::Tensor dilated_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef grid, at::IntArrayRef block) {
  return dilated_conv2d_forward_launch(launch_of(grid, block), input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask,
    bool deterministic, at::IntArrayRef grid, at::IntArrayRef block) {
  return dilated_conv2d_backward_launch(launch_of(grid, block), grad, input, weight, stride, padding, dilation, groups,
                                        output_mask, deterministic);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice(
    const at::Tensor& features, at::IntArrayRef grid, at::IntArrayRef block) {
  return permutohedral_lattice_launch(launch_of(grid, block), features);
}

at::Tensor permutohedral_filter(const at::Tensor& values, const at::Tensor& vertex_ids, const at::Tensor& weights,
                                const at::Tensor& neighbours, const at::Tensor& splat_offsets,
                                const at::Tensor& splat_entries, const at::Tensor& num_vertices, bool adjoint,
                                at::IntArrayRef grid, at::IntArrayRef block) {
  return permutohedral_filter_launch(launch_of(grid, block), values, vertex_ids, weights, neighbours, splat_offsets,
                                     splat_entries, num_vertices, adjoint);
}

// The filter with its two vertex buffers filled with `sentinel` first, returned after it: (out, buffer, buffer).
std::tuple<at::Tensor, at::Tensor, at::Tensor> permutohedral_filter_buffers(
    const at::Tensor& values, const at::Tensor& vertex_ids, const at::Tensor& weights, const at::Tensor& neighbours,
    const at::Tensor& splat_offsets, const at::Tensor& splat_entries, const at::Tensor& num_vertices, bool adjoint,
    double sentinel, at::IntArrayRef grid, at::IntArrayRef block) {
  const std::array<at::Tensor, 2> buffers{
      at::full({values.size(0), neighbours.size(1), values.size(2)}, sentinel, values.options()),
      at::full({values.size(0), neighbours.size(1), values.size(2)}, sentinel, values.options())};
  at::Tensor out = permutohedral_filter_launch(launch_of(grid, block), values, vertex_ids, weights, neighbours,
                                               splat_offsets, splat_entries, num_vertices, adjoint, buffers);
  return {out, buffers[0], buffers[1]};
}

at::Tensor dense_crf_softmax(const at::Tensor& unary, at::TensorList messages, const at::Tensor& weights,
                             at::IntArrayRef grid, at::IntArrayRef block) {
  return dense_crf_softmax_launch(launch_of(grid, block), unary, messages, weights);
}

// Runs the kernels templated on their index type with 64-bit indices (true) or as a GPU would choose (false).
void force_64bit_indices(bool force) {
  force_64bit_index_math() = force;
}

// Walks channels_last inputs in the output's order where a kernel would walk them channel-fastest (true): the
// tracer's tests plant an uncoalesced access this way.
void force_output_thread_order(bool force) {
  segops::force_output_thread_order() = force;
}

#if defined(SEGOPS_MEMTRACE)
// Traces the launches from here to memtrace_end, one run of 64 consecutive warps in warp_stride (every warp: 1).
void memtrace_begin(int64_t warp_stride) {
  TORCH_CHECK(warp_stride >= 1, "memtrace_begin: warp_stride must be >= 1, got ", warp_stride);
  memtrace::State& s = memtrace::state();
  s.launches.clear();
  s.warp_stride = warp_stride;
  s.enabled = true;
}

std::string json_totals(const memtrace::Totals& t) {
  return "{\"requests\": " + std::to_string(t.requests) +
         ", \"requested_bytes\": " + std::to_string(t.requested_bytes) + ", \"sectors\": " + std::to_string(t.sectors) +
         ", \"fewest_sectors\": " + std::to_string(t.fewest_sectors) + "}";
}

// The launches since memtrace_begin, as a JSON list of {kernel, loads, stores, atomics, same_address_atomics,
// distinct_sectors}.
std::string memtrace_end() {
  memtrace::State& s = memtrace::state();
  s.enabled = false;
  std::string out = "[";
  for (size_t i = 0; i < s.launches.size(); ++i) {
    const memtrace::LaunchRecord& r = s.launches[i];
    std::string name;
    for (char ch : r.kernel) name += ch == '"' || ch == '\\' ? '_' : ch;
    out += (i ? ", " : "") + std::string("{\"kernel\": \"") + name + "\", \"loads\": " + json_totals(r.loads) +
           ", \"stores\": " + json_totals(r.stores) + ", \"atomics\": " + std::to_string(r.atomics) +
           ", \"same_address_atomics\": " + std::to_string(r.same_address_atomics) +
           ", \"distinct_sectors\": " + std::to_string(r.distinct_sectors) + "}";
  }
  s.launches.clear();
  return out + "]";
}
#endif

#if defined(SEGOPS_CONCURRENT_EMULATION)
// Makes every atomic add a plain `+=` (true): the race the ThreadSanitizer tests plant in a backward scatter.
void plant_plain_atomic_add_race(bool plant) {
  emulation::plant_plain_atomic_add() = plant;
}
#endif

}  // namespace

TORCH_LIBRARY(segops_emulation, m) {
  m.def("force_64bit_indices(bool force) -> ()", &force_64bit_indices);
  m.def("force_output_thread_order(bool force) -> ()", &force_output_thread_order);
#if defined(SEGOPS_MEMTRACE)
  m.def("memtrace_begin(int warp_stride=1) -> ()", &memtrace_begin);
  m.def("memtrace_end() -> str", &memtrace_end);
#endif
#if defined(SEGOPS_CONCURRENT_EMULATION)
  m.def("plant_plain_atomic_add(bool plant) -> ()", &plant_plain_atomic_add_race);
#endif
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, int[] grid, int[] block) -> Tensor",
      &roi_align);
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned, bool deterministic, "
      "int[] grid, int[] block) -> Tensor",
      &roi_align_backward);
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, int[] grid, int[] block) -> Tensor",
      &multi_scale_roi_align);
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int batch_size, int channels, int[] heights, int[] widths, "
      "int sampling_ratio, bool aligned, bool deterministic, int[] grid, int[] block) -> Tensor[]",
      &multi_scale_roi_align_backward);
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, int[] grid, "
      "int[] block) -> (Tensor, Tensor)",
      &roi_pool);
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, bool deterministic, int[] grid, "
      "int[] block) -> Tensor",
      &roi_pool_backward);
  m.def(
      "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, int[] grid, int[] block) -> Tensor",
      &ps_roi_align);
  m.def(
      "_ps_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int batch_size, int channels, int height, int width, int sampling_ratio, bool deterministic, int[] grid, "
      "int[] block) -> Tensor",
      &ps_roi_align_backward);
  m.def(
      "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, int[] grid, "
      "int[] block) -> Tensor",
      &ps_roi_pool);
  m.def(
      "_ps_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int batch_size, int channels, int height, int width, bool deterministic, int[] grid, int[] block) -> Tensor",
      &ps_roi_pool_backward);
  m.def("flow_warp(Tensor feature, Tensor flow, Tensor? scale, int[] grid, int[] block) -> Tensor", &flow_warp);
  m.def(
      "_flow_warp_backward(Tensor grad, Tensor feature, Tensor flow, Tensor? scale, bool deterministic, int[] grid, "
      "int[] block) -> (Tensor, Tensor, Tensor)",
      &flow_warp_backward);
  m.def(
      "max_unpool2d(Tensor input, Tensor indices, int output_height, int output_width, int[] grid, int[] block) "
      "-> Tensor",
      &max_unpool2d);
  m.def("_max_unpool2d_backward(Tensor grad, Tensor indices, int[] grid, int[] block) -> Tensor",
        &max_unpool2d_backward);
  m.def(
      "dilated_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, int[] grid, int[] block) -> Tensor",
      &dilated_conv2d);
  m.def(
      "_dilated_conv2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask, bool deterministic, int[] grid, int[] block) "
      "-> (Tensor, Tensor, Tensor)",
      &dilated_conv2d_backward);
  m.def(
      "permutohedral_lattice(Tensor features, int[] grid, int[] block) -> (Tensor vertex_ids, Tensor weights, "
      "Tensor neighbours, Tensor splat_offsets, Tensor splat_entries, Tensor num_vertices)",
      &permutohedral_lattice);
  m.def(
      "permutohedral_filter(Tensor values, Tensor vertex_ids, Tensor weights, Tensor neighbours, "
      "Tensor splat_offsets, Tensor splat_entries, Tensor num_vertices, bool adjoint, int[] grid, int[] block) "
      "-> Tensor",
      &permutohedral_filter);
  m.def(
      "permutohedral_filter_buffers(Tensor values, Tensor vertex_ids, Tensor weights, Tensor neighbours, "
      "Tensor splat_offsets, Tensor splat_entries, Tensor num_vertices, bool adjoint, float sentinel, int[] grid, "
      "int[] block) -> (Tensor, Tensor, Tensor)",
      &permutohedral_filter_buffers);
  m.def("dense_crf_softmax(Tensor unary, Tensor[] messages, Tensor weights, int[] grid, int[] block) -> Tensor",
        &dense_crf_softmax);
}

}  // namespace segops::emulation
