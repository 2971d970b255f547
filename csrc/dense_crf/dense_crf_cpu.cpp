// The permutohedral lattice on the CPU.
//  - Build, image by image: the points are embedded in parallel (dense_crf.h); one thread then inserts the entries
//    into a hash table in entry order, so vertex v is the v-th distinct key met (the numbering the GPU build
//    reaches with atomics, see dense_crf_kernels.cuh); neighbours are looked up in parallel; the splat lists come
//    from a counting sort, in entry order.
//  - Filter: splat (a gather over each vertex's list), blur, slice, each in parallel over independent vertices or
//    points. No atomics anywhere: bitwise reproducible for any thread count. A lattice index out of range (a forged
//    lattice) is read as nothing and reported after the pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "dense_crf/dense_crf.h"
#include "dense_crf/dense_crf_checks.h"

namespace segops {
namespace {

using LatticeTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The smallest flat index of a bad item seen by any thread, or -1 for none.
class FirstBad {
 public:
  void record(int64_t index) {
    int64_t current = index_.load();
    while ((current < 0 || index < current) && !index_.compare_exchange_weak(current, index)) {
    }
  }
  int64_t get() const { return index_.load(); }

 private:
  std::atomic<int64_t> index_{-1};
};

int64_t table_capacity(int64_t entries) {
  int64_t capacity = 16;
  while (capacity < 2 * entries) capacity *= 2;
  return capacity;
}

// One image's lattice: the d+1 vertices of each point, their weights, and (filled later) its keys' vertices.
struct ImageLattice {
  std::vector<int32_t> keys;         // [E, d]: each entry's key
  std::vector<int32_t> table;        // hash table of entries, capacity a power of two
  std::vector<int32_t> first_entry;  // [M]: the entry that numbered each vertex (its key is the vertex's key)
};

template <typename scalar_t>
void embed_points(const scalar_t* features, int64_t points, int dims, const LatticeScales<scalar_t>& scales,
                  int32_t* keys, scalar_t* weights, int64_t image) {
  FirstBad bad;
  at::parallel_for(0, points, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (!lattice_embed(features + p * dims, 1, scales, keys + p * (dims + 1) * dims, weights + p * (dims + 1))) {
        bad.record(p);
        std::fill_n(keys + p * (dims + 1) * dims, (dims + 1) * dims, 0);
        std::fill_n(weights + p * (dims + 1), dims + 1, scalar_t(0));
      }
    }
  });
  if (bad.get() >= 0) {
    const int64_t p = bad.get();
    const scalar_t* f = features + p * dims;
    int k = 0;
    while (k < dims && std::isfinite(static_cast<double>(f[k] * scales.scale[k])) &&
           std::abs(static_cast<double>(f[k] * scales.scale[k])) < kLatticeMaxCoordinate)
      ++k;
    k = std::min(k, dims - 1);
    TORCH_CHECK(false, "permutohedral_lattice: features must be finite and at most 2^24 in lattice units (|f| * ",
                static_cast<double>(scales.scale[k]), " for feature ", k, "), got features[", image, ", ", p, ", ",
                k, "] = ", static_cast<double>(f[k]));
  }
}

// Inserts the entries in order: an entry whose key is new numbers the next vertex.
void number_vertices(ImageLattice& lattice, int64_t entries, int dims, int32_t* vertex_ids) {
  lattice.table.assign(static_cast<size_t>(table_capacity(entries)), -1);
  const int64_t capacity = static_cast<int64_t>(lattice.table.size());
  const int32_t* keys = lattice.keys.data();
  for (int64_t e = 0; e < entries; ++e) {
    const int64_t slot = lattice_table_find(lattice.table.data(), capacity, keys, keys + e * dims, dims);
    const int32_t owner = lattice.table[slot];
    if (owner < 0) {
      lattice.table[slot] = static_cast<int32_t>(e);
      vertex_ids[e] = static_cast<int32_t>(lattice.first_entry.size());
      lattice.first_entry.push_back(static_cast<int32_t>(e));
    } else {
      vertex_ids[e] = vertex_ids[owner];
    }
  }
}

// neighbours[v, j, 0 | 1]: the vertex one step along direction j (+1 | -1), or -1; rows past the image's vertices
// are -1.
void find_neighbours(const ImageLattice& lattice, int dims, const int32_t* vertex_ids, int64_t rows,
                     int32_t* neighbours) {
  const int64_t vertices = static_cast<int64_t>(lattice.first_entry.size());
  const int64_t capacity = static_cast<int64_t>(lattice.table.size());
  const int64_t per_vertex = (dims + 1) * 2;
  at::parallel_for(0, vertices, 1024, [&](int64_t begin, int64_t end) {
    int32_t key[kLatticeMaxFeatures];
    for (int64_t v = begin; v < end; ++v) {
      const int32_t* own = lattice.keys.data() + static_cast<int64_t>(lattice.first_entry[v]) * dims;
      for (int j = 0; j <= dims; ++j) {
        for (int side = 0; side < 2; ++side) {
          lattice_neighbour_key(own, dims, j, side == 0 ? 1 : -1, key);
          const int32_t owner = lattice.table[lattice_table_find(lattice.table.data(), capacity,
                                                                 lattice.keys.data(), key, dims)];
          neighbours[v * per_vertex + j * 2 + side] = owner < 0 ? -1 : vertex_ids[owner];
        }
      }
    }
  });
  std::fill(neighbours + vertices * per_vertex, neighbours + rows * per_vertex, -1);
}

// A counting sort of the entries by vertex, stable: offsets [rows + 1], entries [E].
void splat_lists(const int32_t* vertex_ids, int64_t entries, int64_t vertices, int64_t rows, int32_t* offsets,
                 int32_t* sorted_entries) {
  std::fill(offsets, offsets + rows + 1, 0);
  for (int64_t e = 0; e < entries; ++e) ++offsets[vertex_ids[e] + 1];
  for (int64_t v = 0; v < rows; ++v) offsets[v + 1] += offsets[v];
  std::vector<int32_t> next(offsets, offsets + std::max<int64_t>(vertices, 1));
  for (int64_t e = 0; e < entries; ++e) sorted_entries[next[vertex_ids[e]]++] = static_cast<int32_t>(e);
}

LatticeTensors permutohedral_lattice_cpu(const at::Tensor& features_in) {
  const LatticeShape shape = checked_lattice_features(features_in);
  const at::Tensor features = features_in.contiguous();
  const int dims = static_cast<int>(shape.dims);
  const int64_t batch = shape.batch, points = shape.points, entries = shape.entries();
  const at::TensorOptions int_options = features.options().dtype(at::kInt);
  at::Tensor vertex_ids = at::empty({batch, points, dims + 1}, int_options);
  at::Tensor weights = at::empty({batch, points, dims + 1}, features.options());
  at::Tensor splat_entries = at::empty({batch, entries}, int_options);
  at::Tensor num_vertices = at::empty({batch}, features.options().dtype(at::kLong));
  std::vector<ImageLattice> images(static_cast<size_t>(batch));
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "permutohedral_lattice_cpu", [&] {
    const LatticeScales<scalar_t> scales = lattice_scales<scalar_t>(dims);
    for (int64_t b = 0; b < batch; ++b) {
      ImageLattice& image = images[b];
      image.keys.resize(static_cast<size_t>(entries * dims));
      embed_points(features.const_data_ptr<scalar_t>() + b * points * dims, points, dims, scales, image.keys.data(),
                   weights.mutable_data_ptr<scalar_t>() + b * entries, b);
      number_vertices(image, entries, dims, vertex_ids.mutable_data_ptr<int32_t>() + b * entries);
      num_vertices.mutable_data_ptr<int64_t>()[b] = static_cast<int64_t>(image.first_entry.size());
    }
  });
  int64_t rows = 0;
  for (const ImageLattice& image : images) rows = std::max<int64_t>(rows, image.first_entry.size());
  at::Tensor neighbours = at::empty({batch, rows, dims + 1, 2}, int_options);
  at::Tensor splat_offsets = at::empty({batch, rows + 1}, int_options);
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* ids = vertex_ids.const_data_ptr<int32_t>() + b * entries;
    find_neighbours(images[b], dims, ids, rows, neighbours.mutable_data_ptr<int32_t>() + b * rows * (dims + 1) * 2);
    splat_lists(ids, entries, images[b].first_entry.size(), rows,
                splat_offsets.mutable_data_ptr<int32_t>() + b * (rows + 1),
                splat_entries.mutable_data_ptr<int32_t>() + b * entries);
    images[b] = ImageLattice{};  // free the image's table and keys before the next
  }
  return {vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices};
}

// One image's lattice and values, as the filter reads them.
template <typename scalar_t>
struct FilterImage {
  const scalar_t* values;      // [N, C]
  const int32_t* vertex_ids;   // [N, d+1]
  const scalar_t* weights;     // [N, d+1]
  const int32_t* neighbours;   // [M, d+1, 2]
  const int32_t* offsets;      // [M+1]
  const int32_t* entries;      // [E]
  int64_t points, channels, vertices, dims;
};

// Splat into rows [begin, end) of `vertex_values` ([M, C]): each vertex gathers its entries in list order. Returns
// the first vertex with a bad list (offsets out of order or an entry outside [0, E)), or -1.
template <typename scalar_t>
int64_t splat_range(const FilterImage<scalar_t>& im, int64_t begin, int64_t end, scalar_t* vertex_values) {
  const int64_t c_count = im.channels, stride = im.dims + 1, entries = im.points * stride;
  int64_t bad = -1;
  for (int64_t v = begin; v < end; ++v) {
    scalar_t* row = vertex_values + v * c_count;
    std::fill_n(row, c_count, scalar_t(0));
    const int64_t first = im.offsets[v], last = im.offsets[v + 1];
    if (first < 0 || last < first || last > entries) {
      if (bad < 0) bad = v;
      continue;
    }
    for (int64_t i = first; i < last; ++i) {
      const int64_t e = im.entries[i];
      if (e < 0 || e >= entries) {
        if (bad < 0) bad = v;
        continue;
      }
      const scalar_t w = im.weights[e];
      const scalar_t* in = im.values + (e / stride) * c_count;
      for (int64_t c = 0; c < c_count; ++c) row[c] += w * in[c];
    }
  }
  return bad;
}

// Blur rows [begin, end) along direction j, from `in` to `out` ([M, C]). Returns the first vertex with a neighbour
// outside [-1, M), or -1.
template <typename scalar_t>
int64_t blur_range(const FilterImage<scalar_t>& im, int j, int64_t begin, int64_t end, const scalar_t* in,
                   scalar_t* out) {
  const int64_t c_count = im.channels;
  int64_t bad = -1;
  for (int64_t v = begin; v < end; ++v) {
    const int32_t* pair = im.neighbours + (v * (im.dims + 1) + j) * 2;
    int64_t first = pair[0], second = pair[1];
    if (first < -1 || first >= im.vertices || second < -1 || second >= im.vertices) {
      if (bad < 0) bad = v;
      first = second = -1;
    }
    const scalar_t* self = in + v * c_count;
    const scalar_t* a = first >= 0 ? in + first * c_count : nullptr;
    const scalar_t* b = second >= 0 ? in + second * c_count : nullptr;
    scalar_t* row = out + v * c_count;
    if (a != nullptr && b != nullptr) {
      for (int64_t c = 0; c < c_count; ++c) row[c] = lattice_blur_value(self[c], a[c], b[c]);
    } else if (a != nullptr || b != nullptr) {
      const scalar_t* only = a != nullptr ? a : b;
      for (int64_t c = 0; c < c_count; ++c) row[c] = lattice_blur_value(self[c], only[c], scalar_t(0));
    } else {
      for (int64_t c = 0; c < c_count; ++c) row[c] = lattice_blur_value(self[c], scalar_t(0), scalar_t(0));
    }
  }
  return bad;
}

// Slice points [begin, end) from `vertex_values` into `out` ([N, C]). Returns the first point with a vertex id
// outside [0, M), or -1.
template <typename scalar_t>
int64_t slice_range(const FilterImage<scalar_t>& im, int64_t begin, int64_t end, const scalar_t* vertex_values,
                    scalar_t* out) {
  const int64_t c_count = im.channels, stride = im.dims + 1;
  const scalar_t alpha = lattice_slice_scale<scalar_t>(static_cast<int>(im.dims));
  int64_t bad = -1;
  for (int64_t p = begin; p < end; ++p) {
    scalar_t* row = out + p * c_count;
    std::fill_n(row, c_count, scalar_t(0));
    for (int64_t r = 0; r < stride; ++r) {
      const int64_t v = im.vertex_ids[p * stride + r];
      if (v < 0 || v >= im.vertices) {
        if (bad < 0) bad = p;
        continue;
      }
      const scalar_t w = im.weights[p * stride + r];
      const scalar_t* in = vertex_values + v * c_count;
      for (int64_t c = 0; c < c_count; ++c) row[c] += w * in[c];
    }
    for (int64_t c = 0; c < c_count; ++c) row[c] *= alpha;
  }
  return bad;
}

// The float loops compiled for AVX2 too (no FMA: each product rounds, then its sum, as on the GPU).
__attribute__((target_clones("avx2", "default"))) int64_t splat_range_float(const FilterImage<float>& im,
                                                                             int64_t begin, int64_t end, float* out) {
  return splat_range(im, begin, end, out);
}
__attribute__((target_clones("avx2", "default"))) int64_t blur_range_float(const FilterImage<float>& im, int j,
                                                                            int64_t begin, int64_t end,
                                                                            const float* in, float* out) {
  return blur_range(im, j, begin, end, in, out);
}
__attribute__((target_clones("avx2", "default"))) int64_t slice_range_float(const FilterImage<float>& im,
                                                                             int64_t begin, int64_t end,
                                                                             const float* in, float* out) {
  return slice_range(im, begin, end, in, out);
}

int64_t splat_fast(const FilterImage<float>& im, int64_t b, int64_t e, float* out) {
  return splat_range_float(im, b, e, out);
}
int64_t splat_fast(const FilterImage<double>& im, int64_t b, int64_t e, double* out) {
  return splat_range(im, b, e, out);
}
int64_t blur_fast(const FilterImage<float>& im, int j, int64_t b, int64_t e, const float* in, float* out) {
  return blur_range_float(im, j, b, e, in, out);
}
int64_t blur_fast(const FilterImage<double>& im, int j, int64_t b, int64_t e, const double* in, double* out) {
  return blur_range(im, j, b, e, in, out);
}
int64_t slice_fast(const FilterImage<float>& im, int64_t b, int64_t e, const float* in, float* out) {
  return slice_range_float(im, b, e, in, out);
}
int64_t slice_fast(const FilterImage<double>& im, int64_t b, int64_t e, const double* in, double* out) {
  return slice_range(im, b, e, in, out);
}

// Runs fn(begin, end) -> first bad index or -1 in parallel over [0, n); returns the smallest bad index or -1.
template <class Fn>
int64_t parallel_checked(int64_t n, int64_t grain, const Fn& fn) {
  FirstBad bad;
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const int64_t first = fn(begin, end);
    if (first >= 0) bad.record(first);
  });
  return bad.get();
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values_in, const at::Tensor& vertex_ids_in,
                                    const at::Tensor& weights_in, const at::Tensor& neighbours_in,
                                    const at::Tensor& splat_offsets_in, const at::Tensor& splat_entries_in,
                                    const at::Tensor& num_vertices_in, bool adjoint) {
  const LatticeShape shape = checked_lattice_filter(values_in, vertex_ids_in, weights_in, neighbours_in,
                                                    splat_offsets_in, splat_entries_in, num_vertices_in);
  const at::Tensor values = values_in.contiguous(), vertex_ids = vertex_ids_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), neighbours = neighbours_in.contiguous();
  const at::Tensor offsets = splat_offsets_in.contiguous(), entries = splat_entries_in.contiguous();
  const at::Tensor num_vertices = num_vertices_in.contiguous();
  const int64_t batch = shape.batch, points = shape.points, dims = shape.dims, rows = shape.vertex_rows;
  const int64_t channels = values.size(2);
  at::Tensor out = at::empty_like(values);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cpu", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t vertices = num_vertices.const_data_ptr<int64_t>()[b];
      TORCH_CHECK(vertices >= 0 && vertices <= rows, "permutohedral_filter: num_vertices[", b,
                  "] must be in [0, M] = [0, ", rows, "] (M = neighbours.size(1)), got ", vertices);
      const FilterImage<scalar_t> im{values.const_data_ptr<scalar_t>() + b * points * channels,
                                     vertex_ids.const_data_ptr<int32_t>() + b * points * (dims + 1),
                                     weights.const_data_ptr<scalar_t>() + b * points * (dims + 1),
                                     neighbours.const_data_ptr<int32_t>() + b * rows * (dims + 1) * 2,
                                     offsets.const_data_ptr<int32_t>() + b * (rows + 1),
                                     entries.const_data_ptr<int32_t>() + b * points * (dims + 1),
                                     points, channels, vertices, dims};
      std::vector<scalar_t> current(static_cast<size_t>(vertices * channels)), next(current.size());
      const int64_t vertex_grain = std::max<int64_t>(1, 8192 / channels);
      int64_t bad = parallel_checked(vertices, vertex_grain, [&](int64_t begin, int64_t end) {
        return splat_fast(im, begin, end, current.data());
      });
      TORCH_CHECK(bad < 0, "permutohedral_filter: the splat list of vertex ", bad, " of image ", b,
                  " is outside splat_entries or names an entry outside [0, N*(d+1)) = [0, ", points * (dims + 1),
                  ")");
      for (int64_t step = 0; step <= dims; ++step) {
        const int j = static_cast<int>(adjoint ? dims - step : step);
        bad = parallel_checked(vertices, vertex_grain, [&](int64_t begin, int64_t end) {
          return blur_fast(im, j, begin, end, current.data(), next.data());
        });
        TORCH_CHECK(bad < 0, "permutohedral_filter: neighbours[", b, ", ", bad, ", ", j,
                    "] must be vertices in [-1, num_vertices) = [-1, ", vertices, ")");
        std::swap(current, next);
      }
      bad = parallel_checked(points, std::max<int64_t>(1, 4096 / channels), [&](int64_t begin, int64_t end) {
        return slice_fast(im, begin, end, current.data(), out.mutable_data_ptr<scalar_t>() + b * points * channels);
      });
      TORCH_CHECK(bad < 0, "permutohedral_filter: vertex_ids[", b, ", ", bad,
                  "] must be vertices in [0, num_vertices) = [0, ", vertices, ")");
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace segops
