#pragma once
// Permutohedral lattice GPU kernels and their host-side launches, shared by dense_crf_cuda.cu (CudaLaunch) and the
// test-only host emulation (EmulatedLaunch).
//
// Build, with no host synchronisation (the vertex count is data; the vertex rows are its bound M = N*(d+1)):
//  1. embed: one thread per point writes its d+1 keys and weights (dense_crf.h);
//  2. insert: one thread per entry puts its key in a per-image hash table by compare-and-swap, then lowers the slot
//     to its own entry with an integer atomic min: each slot ends with the smallest entry of its key, whatever
//     the order of the updates;
//  3. number: an entry that owns its slot starts a vertex; a cumulative sum over entries numbers the vertices in
//     entry order, the numbering of the CPU build;
//  4. neighbours: one thread per vertex and direction looks its two neighbour keys up;
//  5. splat lists: a stable sort of the entries by vertex, and each vertex's offset by binary search.
// Filter: splat (a gather over each vertex's list), blur, slice, one thread per (vertex or point, channel), no
// atomics: bitwise equal to the CPU path for any grid. Threads of the rows past an image's vertex count (most of the
// bound: 1.5-4.3% of it is live on a photograph) return without a load or a store. Lattice indices out of range fail a
// device-side assert and are read as nothing.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <array>
#include <tuple>
#include <vector>

#include "dense_crf/dense_crf.h"
#include "dense_crf/dense_crf_checks.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

// kDims > 0: d fixed at compile time, the point's arrays in registers; 0: any d, its arrays in a stack frame.
template <typename scalar_t, int kDims>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_embed_kernel(int64_t total, const scalar_t* __restrict__ features, LatticeScales<scalar_t> scales,
                         int32_t* __restrict__ keys, scalar_t* __restrict__ weights) {
  const int d = kDims > 0 ? kDims : scales.dims;
  SEGOPS_KERNEL_LOOP(point, total) {
    int32_t* point_keys = keys + point * (d + 1) * d;
    scalar_t* point_weights = weights + point * (d + 1);
    const bool ok = lattice_embed<kDims>(features + point * d, 1, scales, point_keys, point_weights);
    SEGOPS_KERNEL_ASSERT_DETAILED(ok,
                                  "permutohedral_lattice: features must be finite and at most 2^24 in lattice units",
                                  "permutohedral_lattice: features of point %lld (flat over [B, N]) are not finite "
                                  "or exceed 2^24 in lattice units",
                                  static_cast<long long>(point));
    if (!ok) {
      for (int k = 0; k < (d + 1) * d; ++k) point_keys[k] = 0;
      for (int r = 0; r <= d; ++r) point_weights[r] = scalar_t(0);
    }
  }
}

// Features per point up to which the embedding has a kernel of its own (the dense CRF's kernels have 2 and 5).
constexpr int kLatticeUnrolledFeatures = 8;

// Launches the embedding kernel for d features: the one compiled for d, or the generic one past
// kLatticeUnrolledFeatures.
template <int kDims = 1, typename scalar_t, class Launch>
void launch_lattice_embed(const Launch& launch, int d, int64_t points, const scalar_t* features,
                          const LatticeScales<scalar_t>& scales, int32_t* keys, scalar_t* weights) {
  if constexpr (kDims > kLatticeUnrolledFeatures) {
    launch(points, lattice_embed_kernel<scalar_t, 0>, points, features, scales, keys, weights);
  } else if (d == kDims) {
    launch(points, lattice_embed_kernel<scalar_t, kDims>, points, features, scales, keys, weights);
  } else {
    launch_lattice_embed<kDims + 1>(launch, d, points, features, scales, keys, weights);
  }
}

// tables [B, capacity]; keys [B, E, d].
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_insert_kernel(int64_t total, const int32_t* __restrict__ keys, int64_t entries, int d, int32_t* tables,
                          int64_t capacity) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t image = flat / entries;
    const int32_t entry = static_cast<int32_t>(flat - image * entries);
    const int32_t* image_keys = keys + image * entries * d;
    const int32_t* key = image_keys + static_cast<int64_t>(entry) * d;
    int32_t* table = tables + image * capacity;
    const uint64_t mask = static_cast<uint64_t>(capacity - 1);
    uint64_t slot = lattice_key_hash(key, d) & mask;
    while (true) {
      // Every read of the table is atomic (the CAS returns the owner), so no thread reads a stale slot.
      const int32_t owner = SEGOPS_ATOMIC_CAS(table + slot, int32_t(-1), entry);
      if (owner < 0) break;
      if (lattice_keys_equal(image_keys + static_cast<int64_t>(owner) * d, key, d)) {
        SEGOPS_ATOMIC_MIN(table + slot, entry);
        break;
      }
      slot = (slot + 1) & mask;
    }
  }
}

// owner[e] = the smallest entry with e's key; starts[e] = 1 where that is e itself.
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_owner_kernel(int64_t total, const int32_t* __restrict__ keys, int64_t entries, int d,
                         const int32_t* __restrict__ tables, int64_t capacity, int32_t* __restrict__ owners,
                         int32_t* __restrict__ starts) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t image = flat / entries;
    const int64_t entry = flat - image * entries;
    const int32_t* image_keys = keys + image * entries * d;
    const int32_t* table = tables + image * capacity;
    const int32_t owner = table[lattice_table_find(table, capacity, image_keys, image_keys + entry * d, d)];
    owners[flat] = owner;
    starts[flat] = owner == entry ? 1 : 0;
  }
}

// vertex_ids[e] = the number of vertices started up to e's owner, minus one; first_entry[v] = the owner of vertex v.
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_number_kernel(int64_t total, int64_t entries, const int32_t* __restrict__ owners,
                          const int32_t* __restrict__ started, int32_t* __restrict__ vertex_ids,
                          int32_t* __restrict__ first_entry) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t image = flat / entries;
    const int64_t entry = flat - image * entries;
    const int32_t owner = owners[flat];
    const int32_t vertex = started[image * entries + owner] - 1;
    vertex_ids[flat] = vertex;
    if (owner == entry) first_entry[image * entries + vertex] = owner;
  }
}

// neighbours [B, M, d+1, 2] with M = E: one thread per (image, vertex row, direction).
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_neighbour_kernel(int64_t total, const int32_t* __restrict__ keys, int64_t entries, int d,
                             const int32_t* __restrict__ tables, int64_t capacity,
                             const int32_t* __restrict__ first_entry, const int32_t* __restrict__ vertex_ids,
                             const int64_t* __restrict__ num_vertices, int32_t* __restrict__ neighbours) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int j = static_cast<int>(flat % (d + 1));
    const int64_t row = flat / (d + 1);
    const int64_t image = row / entries;
    const int64_t vertex = row - image * entries;
    int32_t* out = neighbours + flat * 2;
    if (vertex >= num_vertices[image]) {
      out[0] = out[1] = -1;
      continue;
    }
    const int32_t* image_keys = keys + image * entries * d;
    const int32_t* table = tables + image * capacity;
    const int32_t* own = image_keys + static_cast<int64_t>(first_entry[image * entries + vertex]) * d;
    int32_t key[kLatticeMaxFeatures];
    for (int side = 0; side < 2; ++side) {
      lattice_neighbour_key(own, d, j, side == 0 ? 1 : -1, key);
      const int32_t owner = table[lattice_table_find(table, capacity, image_keys, key, d)];
      out[side] = owner < 0 ? -1 : vertex_ids[image * entries + owner];
    }
  }
}

// splat_offsets[b, v] = the first position of vertex v in the image's sorted vertex ids (v in [0, M]).
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_offsets_kernel(int64_t total, int64_t entries, const int32_t* __restrict__ sorted_vertex_ids,
                           int32_t* __restrict__ offsets) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t image = flat / (entries + 1);
    const int64_t vertex = flat - image * (entries + 1);
    const int32_t* sorted = sorted_vertex_ids + image * entries;
    int64_t low = 0, high = entries;
    while (low < high) {
      const int64_t mid = (low + high) / 2;
      if (sorted[mid] < vertex)
        low = mid + 1;
      else
        high = mid;
    }
    offsets[flat] = static_cast<int32_t>(low);
  }
}

// The filter's geometry: B images of N points, C channels, M vertex rows, d features.
struct FilterGeometry {
  int64_t points, channels, rows, dims;
};

// An image's vertex count, clamped to the vertex rows (a forged count fails the splat kernel's assert).
__device__ inline int64_t image_vertices(const int64_t* num_vertices, int64_t image, int64_t rows) {
  const int64_t count = num_vertices[image];
  return count < 0 ? 0 : (count > rows ? rows : count);
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_splat_kernel(int64_t total, const scalar_t* __restrict__ values, const scalar_t* __restrict__ weights,
                         const int32_t* __restrict__ offsets, const int32_t* __restrict__ entries,
                         const int64_t* __restrict__ num_vertices, scalar_t* __restrict__ vertex_values,
                         FilterGeometry g) {
  const int64_t entry_count = g.points * (g.dims + 1);
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t c = flat % g.channels;
    const int64_t row = flat / g.channels;
    const int64_t image = row / g.rows;
    const int64_t vertex = row - image * g.rows;
    if (vertex == 0 && c == 0) {
      SEGOPS_KERNEL_ASSERT(num_vertices[image] >= 0 && num_vertices[image] <= g.rows,
                           "permutohedral_filter: num_vertices must be in [0, M] (M = neighbours.size(1))");
    }
    // Rows past the vertex count are never read (blur and slice stop at it): no store to them.
    if (vertex >= image_vertices(num_vertices, image, g.rows)) continue;
    scalar_t sum = 0;
    const int32_t* image_offsets = offsets + image * (g.rows + 1);
    const int64_t first = image_offsets[vertex], last = image_offsets[vertex + 1];
    const bool list_ok = first >= 0 && first <= last && last <= entry_count;
    SEGOPS_KERNEL_ASSERT(list_ok, "permutohedral_filter: a splat list is outside splat_entries");
    for (int64_t i = list_ok ? first : last; i < last; ++i) {
      const int64_t e = entries[image * entry_count + i];
      const bool entry_ok = e >= 0 && e < entry_count;
      SEGOPS_KERNEL_ASSERT(entry_ok, "permutohedral_filter: a splat entry is outside [0, N*(d+1))");
      if (!entry_ok) continue;
      sum += weights[image * entry_count + e] * values[(image * g.points + e / (g.dims + 1)) * g.channels + c];
    }
    vertex_values[flat] = sum;
  }
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_blur_kernel(int64_t total, const scalar_t* __restrict__ in, const int32_t* __restrict__ neighbours,
                        const int64_t* __restrict__ num_vertices, int j, scalar_t* __restrict__ out, FilterGeometry g) {
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t c = flat % g.channels;
    const int64_t row = flat / g.channels;
    const int64_t image = row / g.rows;
    const int64_t vertex = row - image * g.rows;
    const int64_t vertices = image_vertices(num_vertices, image, g.rows);
    if (vertex >= vertices) continue;  // a dead row: neither read nor written
    const int32_t* pair = neighbours + (row * (g.dims + 1) + j) * 2;
    const int64_t first = pair[0], second = pair[1];
    const bool ok = first >= -1 && first < vertices && second >= -1 && second < vertices;
    SEGOPS_KERNEL_ASSERT(ok, "permutohedral_filter: a neighbour is outside [-1, num_vertices)");
    const scalar_t* image_in = in + image * g.rows * g.channels;
    const scalar_t a = ok && first >= 0 ? image_in[first * g.channels + c] : scalar_t(0);
    const scalar_t b = ok && second >= 0 ? image_in[second * g.channels + c] : scalar_t(0);
    out[flat] = lattice_blur_value(in[flat], a, b);
  }
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    lattice_slice_kernel(int64_t total, const scalar_t* __restrict__ vertex_values,
                         const int32_t* __restrict__ vertex_ids, const scalar_t* __restrict__ weights,
                         const int64_t* __restrict__ num_vertices, scalar_t* __restrict__ out, FilterGeometry g) {
  const int64_t stride = g.dims + 1;
  const scalar_t alpha = lattice_slice_scale<scalar_t>(static_cast<int>(g.dims));
  SEGOPS_KERNEL_LOOP(flat, total) {
    const int64_t c = flat % g.channels;
    const int64_t point = flat / g.channels;  // flat over [B, N]
    const int64_t image = point / g.points;
    const int64_t vertices = image_vertices(num_vertices, image, g.rows);
    scalar_t sum = 0;
    for (int64_t r = 0; r < stride; ++r) {
      const int64_t v = vertex_ids[point * stride + r];
      const bool ok = v >= 0 && v < vertices;
      SEGOPS_KERNEL_ASSERT(ok, "permutohedral_filter: a vertex id is outside [0, num_vertices)");
      if (!ok) continue;
      sum += weights[point * stride + r] * vertex_values[(image * g.rows + v) * g.channels + c];
    }
    out[flat] = sum * alpha;
  }
}

template <typename scalar_t>
struct CrfMessages {
  const scalar_t* data[kMaxCrfKernels];
  // Called with k a constant (crf_logit's loop is unrolled): the pointer comes from the kernel's parameters.
  SEGOPS_HOST_DEVICE const scalar_t* operator()(int k) const { return data[k]; }
};

// One thread per pixel (row of `labels` values): dense_crf.h's crf_softmax_row.
template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    crf_softmax_kernel(int64_t rows, const scalar_t* __restrict__ unary, CrfMessages<scalar_t> messages,
                       const scalar_t* __restrict__ weights, int kernels, int64_t labels, scalar_t* __restrict__ out) {
  SEGOPS_KERNEL_LOOP(row, rows) {
    crf_softmax_row(unary, messages, weights, kernels, row * labels, labels, out);
  }
}

template <class Launch>
at::Tensor dense_crf_softmax_launch(const Launch& launch, const at::Tensor& unary_in, at::TensorList messages_in,
                                    const at::Tensor& weights_in) {
  const CheckedCrfSoftmax c = checked_crf_softmax(unary_in, messages_in, weights_in);
  const at::Tensor &unary = c.unary, &weights = c.weights;
  const std::vector<at::Tensor>& messages = c.messages;
  at::Tensor out = at::empty_like(unary);
  const int64_t labels = unary.size(2), rows = labels > 0 ? unary.numel() / labels : 0;
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "dense_crf_softmax_cuda", [&] {
    CrfMessages<scalar_t> pointers{};
    for (size_t k = 0; k < messages.size(); ++k) pointers.data[k] = messages[k].const_data_ptr<scalar_t>();
    launch(rows, crf_softmax_kernel<scalar_t>, rows, unary.const_data_ptr<scalar_t>(), pointers,
           weights.const_data_ptr<scalar_t>(), static_cast<int>(messages.size()), labels,
           out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// Builds the lattice of features [B, N, d]: see permutohedral_lattice in csrc/registration.cpp. Vertex rows M =
// N*(d+1), the bound, so that nothing waits for the vertex count.
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_launch(
    const Launch& launch, const at::Tensor& features_in) {
  const LatticeShape shape = checked_lattice_features(features_in);
  const at::Tensor features = features_in.contiguous();
  const int d = static_cast<int>(shape.dims);
  const int64_t batch = shape.batch, points = shape.points, entries = shape.entries();
  const at::TensorOptions int_options = features.options().dtype(at::kInt);
  int64_t capacity = 16;
  while (capacity < 2 * entries) capacity *= 2;
  at::Tensor keys = at::empty({batch, entries, d}, int_options);
  at::Tensor weights = at::empty({batch, points, d + 1}, features.options());
  at::Tensor tables = at::full({batch, capacity}, -1, int_options);
  at::Tensor owners = at::empty({batch, entries}, int_options);
  at::Tensor starts = at::empty({batch, entries}, int_options);
  at::Tensor vertex_ids = at::empty({batch, points, d + 1}, int_options);
  at::Tensor first_entry = at::empty({batch, entries}, int_options);
  at::Tensor neighbours = at::empty({batch, entries, d + 1, 2}, int_options);
  at::Tensor splat_offsets = at::empty({batch, entries + 1}, int_options);
  at::Tensor num_vertices = at::zeros({batch}, features.options().dtype(at::kLong));
  if (batch * entries == 0) {
    splat_offsets.zero_();
    return {vertex_ids, weights, neighbours, splat_offsets, at::empty({batch, entries}, int_options), num_vertices};
  }
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "permutohedral_lattice_cuda", [&] {
    launch_lattice_embed(launch, d, batch * points, features.const_data_ptr<scalar_t>(), lattice_scales<scalar_t>(d),
                         keys.mutable_data_ptr<int32_t>(), weights.mutable_data_ptr<scalar_t>());
  });
  const int64_t total = batch * entries;
  launch(total, lattice_insert_kernel, total, keys.const_data_ptr<int32_t>(), entries, d,
         tables.mutable_data_ptr<int32_t>(), capacity);
  launch(total, lattice_owner_kernel, total, keys.const_data_ptr<int32_t>(), entries, d,
         tables.const_data_ptr<int32_t>(), capacity, owners.mutable_data_ptr<int32_t>(),
         starts.mutable_data_ptr<int32_t>());
  const at::Tensor started = starts.cumsum(1, at::kInt);  // inclusive: vertex of a starting entry + 1
  num_vertices.copy_(started.select(1, entries - 1));
  launch(total, lattice_number_kernel, total, entries, owners.const_data_ptr<int32_t>(),
         started.const_data_ptr<int32_t>(), vertex_ids.mutable_data_ptr<int32_t>(),
         first_entry.mutable_data_ptr<int32_t>());
  launch(total * (d + 1), lattice_neighbour_kernel, total * (d + 1), keys.const_data_ptr<int32_t>(), entries, d,
         tables.const_data_ptr<int32_t>(), capacity, first_entry.const_data_ptr<int32_t>(),
         vertex_ids.const_data_ptr<int32_t>(), num_vertices.const_data_ptr<int64_t>(),
         neighbours.mutable_data_ptr<int32_t>());
  // Stable: each vertex's entries stay in entry order, the CPU build's splat order.
  auto [sorted_vertex_ids, order] = at::sort(vertex_ids.view({batch, entries}), /*stable=*/std::optional<bool>(true),
                                             /*dim=*/1, /*descending=*/false);
  const at::Tensor sorted_c = sorted_vertex_ids.contiguous();
  launch(batch * (entries + 1), lattice_offsets_kernel, batch * (entries + 1), entries,
         sorted_c.const_data_ptr<int32_t>(), splat_offsets.mutable_data_ptr<int32_t>());
  return {vertex_ids, weights, neighbours, splat_offsets, order.to(at::kInt), num_vertices};
}

// Filters values [B, N, C] with a lattice: see permutohedral_filter in csrc/registration.cpp. The blur ping-pongs
// between two vertex buffers [B, M, C], allocated uninitialised unless given (`buffers`: the emulation tests pass them
// filled with a sentinel to show that no kernel stores to the rows past an image's vertex count).
template <class Launch>
at::Tensor permutohedral_filter_launch(const Launch& launch, const at::Tensor& values_in,
                                       const at::Tensor& vertex_ids_in, const at::Tensor& weights_in,
                                       const at::Tensor& neighbours_in, const at::Tensor& splat_offsets_in,
                                       const at::Tensor& splat_entries_in, const at::Tensor& num_vertices_in,
                                       bool adjoint, std::array<at::Tensor, 2> buffers = {}) {
  const CheckedFilter c = checked_lattice_filter(values_in, vertex_ids_in, weights_in, neighbours_in, splat_offsets_in,
                                                 splat_entries_in, num_vertices_in);
  const LatticeShape& shape = c.shape;
  const at::Tensor &values = c.values, &vertex_ids = c.vertex_ids, &weights = c.weights, &neighbours = c.neighbours;
  const at::Tensor &offsets = c.splat_offsets, &entries = c.splat_entries, &num_vertices = c.num_vertices;
  const FilterGeometry g{shape.points, values.size(2), shape.vertex_rows, shape.dims};
  at::Tensor out = at::empty_like(values);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cuda", [&] {
    for (at::Tensor& buffer : buffers) {
      if (!buffer.defined()) buffer = at::empty({shape.batch, g.rows, g.channels}, values.options());
      TORCH_CHECK(buffer.sizes() == at::IntArrayRef({shape.batch, g.rows, g.channels}) && buffer.is_contiguous() &&
                      buffer.scalar_type() == values.scalar_type(),
                  "permutohedral_filter: the vertex buffers must be contiguous [B, M, C] of values' dtype");
    }
    at::Tensor current = buffers[0], next = buffers[1];
    const int64_t vertex_work = current.numel();
    launch(vertex_work, lattice_splat_kernel<scalar_t>, vertex_work, values.const_data_ptr<scalar_t>(),
           weights.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int32_t>(), entries.const_data_ptr<int32_t>(),
           num_vertices.const_data_ptr<int64_t>(), current.mutable_data_ptr<scalar_t>(), g);
    for (int64_t step = 0; step <= g.dims; ++step) {
      const int j = static_cast<int>(adjoint ? g.dims - step : step);
      launch(vertex_work, lattice_blur_kernel<scalar_t>, vertex_work, current.const_data_ptr<scalar_t>(),
             neighbours.const_data_ptr<int32_t>(), num_vertices.const_data_ptr<int64_t>(), j,
             next.mutable_data_ptr<scalar_t>(), g);
      std::swap(current, next);
    }
    launch(out.numel(), lattice_slice_kernel<scalar_t>, out.numel(), current.const_data_ptr<scalar_t>(),
           vertex_ids.const_data_ptr<int32_t>(), weights.const_data_ptr<scalar_t>(),
           num_vertices.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), g);
  });
  return out;
}

}  // namespace segops
