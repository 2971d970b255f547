// The permutohedral lattice on the CPU.
//  - Build, image by image: the points are embedded in parallel (dense_crf.h; 8 at a time in vectors); vertex v is
//    the v-th distinct key met in entry order (the numbering the GPU build reaches with atomics, see
//    dense_crf_kernels.cuh), numbered chunk by chunk in parallel and merged in chunk order; neighbours are looked
//    up in parallel in a table of the vertices' keys; the splat lists come from a counting sort, in entry order.
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
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/parallel.h"
#include "dense_crf/dense_crf.h"
#include "dense_crf/dense_crf_checks.h"

namespace segops {
namespace {

using LatticeTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// fn(std::integral_constant<int, d>) for the dense CRF's d (2: smoothness, 5: appearance), whose CPU loops are
// compiled at that d as the GPU's kernels are (unrolled, arrays in registers, the point of an entry a multiply);
// fn(std::integral_constant<int, 0>) for any other d, read at run time. The same operations either way.
template <class Fn>
decltype(auto) with_crf_dims(int64_t dims, const Fn& fn) {
  switch (dims) {
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 5:
      return fn(std::integral_constant<int, 5>{});
    default:
      return fn(std::integral_constant<int, 0>{});
  }
}

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

// One image's lattice and values, as the filter reads them.
template <typename scalar_t>
struct FilterImage {
  const scalar_t* values;     // [N, C]
  const int32_t* vertex_ids;  // [N, d+1]
  const scalar_t* weights;    // [N, d+1]
  const int32_t* neighbours;  // [M, d+1, 2]
  const int32_t* offsets;     // [M+1]
  const int32_t* entries;     // [E]
  int64_t points, channels, vertices, dims;
};

// The loops, twice (see dense_crf_cpu_loops.inc).
namespace baseline {
#include "dense_crf/dense_crf_cpu_loops.inc"
}  // namespace baseline
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#include "dense_crf/dense_crf_cpu_loops.inc"
}  // namespace avx2
#pragma GCC pop_options
const bool kUseAvx2 = __builtin_cpu_supports("avx2");
#define SEGOPS_CPU_PICK(...) (kUseAvx2 ? avx2::__VA_ARGS__ : baseline::__VA_ARGS__)
#else
#define SEGOPS_CPU_PICK(...) (baseline::__VA_ARGS__)
#endif
// The copy of a loop templated on scalar_t for this CPU.
#define SEGOPS_CPU_LOOP(name) SEGOPS_CPU_PICK(name<scalar_t>)

// A hash table of keys of d coordinates held in an array beside it (key i at keys + i * d): each slot a key's index
// or -1, at most half full. The methods' kDims > 0 fixes d at compile time (the hash and the compare unroll).
class KeyTable {
 public:
  explicit KeyTable(int dims) : dims_(dims), slots_(1024, -1) {}

  // The slot holding `key`, or the empty slot where it would go.
  template <int kDims = 0>
  int64_t find(const int32_t* keys, const int32_t* key) const {
    return lattice_table_find(slots_.data(), static_cast<int64_t>(slots_.size()), keys, key, kDims > 0 ? kDims : dims_);
  }
  int32_t owner(int64_t slot) const { return slots_[slot]; }
  // Puts `index` in the empty `slot` (from find), the table then holding `count` keys, the i-th at index_at(i)
  // (re-inserted when the table grows).
  template <int kDims = 0, class IndexAt>
  void insert(int64_t slot, int32_t index, const int32_t* keys, int64_t count, const IndexAt& index_at) {
    slots_[slot] = index;
    if (2 * count > static_cast<int64_t>(slots_.size())) {
      slots_.assign(slots_.size() * 2, -1);
      const int64_t d = kDims > 0 ? kDims : dims_;
      for (int64_t i = 0; i < count; ++i) {
        const int32_t held = index_at(i);
        slots_[find<kDims>(keys, keys + held * d)] = held;
      }
    }
  }

 private:
  int dims_;
  std::vector<int32_t> slots_;
};

// One image's lattice while it is built: each vertex's key and their table.
struct ImageLattice {
  std::vector<int32_t> vertex_keys;  // [M, d]: vertex v's key
  std::optional<KeyTable> table;     // over vertex_keys: slot -> vertex
  int64_t vertices = 0;
};

// Embeds points [begin, end) (their keys to keys [end - begin, d+1, d], their weights to weights [N, d+1] at row p);
// records a point that does not fit in `bad` and zeroes its keys and weights. kDims: as lattice_embed's (0: d read
// at run time).
template <int kDims, typename scalar_t>
void embed_point_range(const scalar_t* features, int64_t begin, int64_t end, int dims,
                       const LatticeScales<scalar_t>& scales, int32_t* keys, scalar_t* weights, FirstBad& bad) {
  const int64_t stride = dims + 1;
  int64_t p = begin;
  if constexpr (kDims > 0 && std::is_same_v<scalar_t, float>) {
    // 8 points at a time where every one of them fits (all but a forged or overflowing input).
    const auto embed_eight = SEGOPS_CPU_PICK(embed_eight_points<kDims>);
    for (; p + 8 <= end; p += 8) {
      if (!embed_eight(features + p * dims, scales, keys + (p - begin) * stride * dims, weights + p * stride)) break;
    }
  }
  for (; p < end; ++p) {
    int32_t* point_keys = keys + (p - begin) * stride * dims;
    if (!lattice_embed<kDims>(features + p * dims, 1, scales, point_keys, weights + p * stride)) {
      bad.record(p);
      std::fill_n(point_keys, stride * dims, 0);
      std::fill_n(weights + p * stride, stride, scalar_t(0));
    }
  }
}

// The error for point p of image `image`, which does not fit in the lattice: names its first bad feature.
template <typename scalar_t>
void report_bad_point(const scalar_t* features, int64_t p, int dims, const LatticeScales<scalar_t>& scales,
                      int64_t image) {
  const scalar_t* f = features + p * dims;
  int k = 0;  // the feature that failed
  while (k < dims && lattice_coordinate_in_range(static_cast<scalar_t>(f[k]) * scales.scale[k])) ++k;
  k = std::min(k, dims - 1);
  TORCH_CHECK(false, "permutohedral_lattice: features must be finite and at most 2^24 in lattice units (feature ", k,
              " times ", static_cast<double>(scales.scale[k]), "), got features[", image, ", ", p, ", ", k,
              "] = ", static_cast<double>(f[k]));
}

// Points per chunk of the embedding and numbering: a fixed size, so the work split does not depend on the thread
// count; a chunk's keys (1 MB at d = 5) stay in cache from the embedding to the numbering.
constexpr int64_t kNumberingChunk = 8192;

// Numbers a chunk's entries' keys (keys [entries, d]) in the order they first occur there: vertex_ids[e] the
// chunk-local number of entry e's key; the keys met, in that order, appended to distinct_keys. kDims: as KeyTable's.
template <int kDims>
void number_chunk(const int32_t* keys, int dims, int64_t entries, int32_t* vertex_ids,
                  std::vector<int32_t>& distinct_keys) {
  const int64_t d = kDims > 0 ? kDims : dims, stride = d + 1;
  KeyTable table(dims);
  std::vector<int32_t> first;  // the entry that first had each number
  for (int64_t e = 0; e < entries; ++e) {
    const int32_t* key = keys + e * d;
    // Most points lie in the simplex of the point before: skip the table then.
    if (e >= stride && lattice_keys_equal(key, key - stride * d, d)) {
      vertex_ids[e] = vertex_ids[e - stride];
      continue;
    }
    const int64_t slot = table.find<kDims>(keys, key);
    const int32_t owner = table.owner(slot);
    if (owner >= 0) {
      vertex_ids[e] = vertex_ids[owner];
      continue;
    }
    vertex_ids[e] = static_cast<int32_t>(first.size());
    first.push_back(static_cast<int32_t>(e));
    distinct_keys.insert(distinct_keys.end(), key, key + d);
    table.insert<kDims>(slot, static_cast<int32_t>(e), keys, static_cast<int64_t>(first.size()),
                        [&](int64_t i) { return first[i]; });
  }
}

// Embeds an image's points and numbers its vertices in the order their keys first occur among the entries (the GPU
// build's numbering), in three passes: each chunk of points is embedded and numbers its own keys in
// first-occurrence order (in parallel); the chunks' keys are merged in chunk order into the image's vertex keys and
// table (serially, over few keys: neighbouring points share their simplex); each entry's chunk-local number is
// mapped to the global one (in parallel). No array of every entry's key (22 MB at 500x375, d = 5) is made.
template <typename scalar_t>
void embed_and_number(const scalar_t* features, int64_t points, int dims, const LatticeScales<scalar_t>& scales,
                      scalar_t* weights, int32_t* vertex_ids, ImageLattice& lattice, int64_t image) {
  const int64_t stride = dims + 1;
  const int64_t chunks = (points + kNumberingChunk - 1) / kNumberingChunk;
  std::vector<std::vector<int32_t>> chunk_keys(static_cast<size_t>(chunks));  // [its distinct keys, d]
  FirstBad bad;
  std::vector<std::vector<int32_t>> worker_keys(static_cast<size_t>(chunk_workers(chunks, 1)));
  parallel_chunks_by_worker(chunks, 1, [&](int64_t worker, int64_t begin, int64_t end) {
    std::vector<int32_t>& keys = worker_keys[worker];
    keys.resize(static_cast<size_t>(std::min(points, kNumberingChunk) * stride * dims));
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first_point = chunk * kNumberingChunk;
      const int64_t last_point = std::min(points, first_point + kNumberingChunk);
      with_crf_dims(dims, [&](auto d) {
        embed_point_range<d.value>(features, first_point, last_point, dims, scales, keys.data(), weights, bad);
        number_chunk<d.value>(keys.data(), dims, (last_point - first_point) * stride, vertex_ids + first_point * stride,
                              chunk_keys[chunk]);
      });
    }
  });
  if (bad.get() >= 0) report_bad_point(features, bad.get(), dims, scales, image);
  KeyTable& table = lattice.table.emplace(dims);
  std::vector<int32_t>& vertex_keys = lattice.vertex_keys;
  std::vector<std::vector<int32_t>> chunk_to_global(static_cast<size_t>(chunks));
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const std::vector<int32_t>& keys = chunk_keys[chunk];
    for (size_t first = 0; first < keys.size(); first += dims) {
      const int32_t* key = keys.data() + first;
      const int64_t slot = table.find(vertex_keys.data(), key);
      int32_t vertex = table.owner(slot);
      if (vertex < 0) {  // not met in an earlier chunk
        vertex = static_cast<int32_t>(lattice.vertices++);
        vertex_keys.insert(vertex_keys.end(), key, key + dims);
        table.insert(slot, vertex, vertex_keys.data(), lattice.vertices, [](int64_t i) { return int32_t(i); });
      }
      chunk_to_global[chunk].push_back(vertex);
    }
  }
  parallel_chunks(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t e_end = std::min(points, (chunk + 1) * kNumberingChunk) * stride;
      for (int64_t e = chunk * kNumberingChunk * stride; e < e_end; ++e)
        vertex_ids[e] = chunk_to_global[chunk][vertex_ids[e]];
    }
  });
}

// neighbours[v, j, 0 | 1]: the vertex one step along direction j (+1 | -1), or -1; rows past the image's vertices
// are -1.
void find_neighbours(const ImageLattice& lattice, int dims, int64_t rows, int32_t* neighbours) {
  const int64_t vertices = lattice.vertices;
  const int64_t per_vertex = (dims + 1) * 2;
  const KeyTable& table = *lattice.table;
  const int32_t* vertex_keys = lattice.vertex_keys.data();
  parallel_chunks(vertices, 1024, [&](int64_t begin, int64_t end) {
    with_crf_dims(dims, [&](auto kDims) {
      const int d = kDims.value > 0 ? kDims.value : dims;
      int32_t key[kLatticeMaxFeatures];
      for (int64_t v = begin; v < end; ++v) {
        for (int j = 0; j <= d; ++j) {
          for (int side = 0; side < 2; ++side) {
            lattice_neighbour_key(vertex_keys + v * d, d, j, side == 0 ? 1 : -1, key);
            neighbours[v * per_vertex + j * 2 + side] = table.owner(table.find<kDims.value>(vertex_keys, key));
          }
        }
      }
    });
  });
  std::fill(neighbours + vertices * per_vertex, neighbours + rows * per_vertex, -1);
}

// Entries per chunk of the splat lists' counting sort: at least this many, and at most kMaxSortChunks chunks (each
// holds a count per vertex). Fixed by the sizes alone, not the thread count.
constexpr int64_t kMinSortChunk = int64_t(1) << 16;
constexpr int64_t kMaxSortChunks = 16;

// A counting sort of the entries by vertex, stable: offsets [rows + 1], entries [E]. In parallel over chunks of
// entries: each chunk counts its entries per vertex, then writes them from where the chunks before it end, so each
// vertex's list is in entry order, as a serial sort gives.
void splat_lists(const int32_t* vertex_ids, int64_t entries, int64_t vertices, int64_t rows, int32_t* offsets,
                 int32_t* sorted_entries) {
  const int64_t chunk_size = std::max(kMinSortChunk, (entries + kMaxSortChunks - 1) / kMaxSortChunks);
  const int64_t chunks = (entries + chunk_size - 1) / chunk_size;
  // position[c * vertices + v]: chunk c's count of vertex v, then where its first entry of v goes.
  std::vector<int32_t> position(static_cast<size_t>(chunks * vertices), 0);
  parallel_chunks(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* count = position.data() + c * vertices;
      for (int64_t e = c * chunk_size; e < std::min(entries, (c + 1) * chunk_size); ++e) ++count[vertex_ids[e]];
    }
  });
  // The lists' offsets from the totals, then each chunk's starts, chunk by chunk (rows of `position` in order).
  std::fill(offsets, offsets + rows + 1, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t v = 0; v < vertices; ++v) offsets[v + 1] += position[c * vertices + v];
  }
  for (int64_t v = 0; v < rows; ++v) offsets[v + 1] += offsets[v];  // rows past the vertices: empty lists
  std::vector<int32_t> start(offsets, offsets + vertices);
  for (int64_t c = 0; c < chunks; ++c) {
    int32_t* row = position.data() + c * vertices;
    for (int64_t v = 0; v < vertices; ++v) {
      const int32_t count = row[v];
      row[v] = start[v];
      start[v] += count;
    }
  }
  parallel_chunks(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* next = position.data() + c * vertices;
      for (int64_t e = c * chunk_size; e < std::min(entries, (c + 1) * chunk_size); ++e)
        sorted_entries[next[vertex_ids[e]]++] = static_cast<int32_t>(e);
    }
  });
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
      embed_and_number(features.const_data_ptr<scalar_t>() + b * points * dims, points, dims, scales,
                       weights.mutable_data_ptr<scalar_t>() + b * entries,
                       vertex_ids.mutable_data_ptr<int32_t>() + b * entries, image, b);
      num_vertices.mutable_data_ptr<int64_t>()[b] = image.vertices;
    }
  });
  int64_t rows = 0;
  for (const ImageLattice& image : images) rows = std::max(rows, image.vertices);
  at::Tensor neighbours = at::empty({batch, rows, dims + 1, 2}, int_options);
  at::Tensor splat_offsets = at::empty({batch, rows + 1}, int_options);
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* ids = vertex_ids.const_data_ptr<int32_t>() + b * entries;
    find_neighbours(images[b], dims, rows, neighbours.mutable_data_ptr<int32_t>() + b * rows * (dims + 1) * 2);
    splat_lists(ids, entries, images[b].vertices, rows, splat_offsets.mutable_data_ptr<int32_t>() + b * (rows + 1),
                splat_entries.mutable_data_ptr<int32_t>() + b * entries);
    images[b] = ImageLattice{};  // free the image's table before the next
  }
  return {vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices};
}

constexpr int64_t kSplatTasks = 32;

// tasks + 1 increasing vertex bounds, [bounds[t], bounds[t + 1]) holding about 1/tasks of the entries. Offsets out
// of order (a forged lattice) give uneven tasks, never bounds outside [0, vertices]; the splat reports them.
std::vector<int64_t> balanced_vertex_bounds(const int32_t* offsets, int64_t vertices, int64_t tasks) {
  std::vector<int64_t> bounds(static_cast<size_t>(tasks + 1), vertices);
  bounds[0] = 0;
  const int64_t total = vertices > 0 ? std::max<int64_t>(offsets[vertices], 0) : 0;
  for (int64_t t = 1; t < tasks; ++t) {
    const int64_t target = total * t / tasks;
    const int64_t v = std::lower_bound(offsets, offsets + vertices, target) - offsets;
    bounds[t] = std::max(bounds[t - 1], std::min(v, vertices));
  }
  return bounds;
}

// Runs fn(begin, end) -> first bad index or -1 in parallel over [0, n), in chunks of `grain` items taken as threads
// come free; returns the smallest bad index or -1.
template <class Fn>
int64_t parallel_checked(int64_t n, int64_t grain, const Fn& fn) {
  FirstBad bad;
  parallel_chunks(n, grain, [&](int64_t begin, int64_t end) {
    const int64_t first = fn(begin, end);
    if (first >= 0) bad.record(first);
  });
  return bad.get();
}

// Image b of a checked filter call.
template <typename scalar_t>
FilterImage<scalar_t> filter_image(const CheckedFilter& c, int64_t b) {
  const LatticeShape& shape = c.shape;
  const int64_t points = shape.points, dims = shape.dims, rows = shape.vertex_rows, channels = c.values.size(2);
  const int64_t vertices = c.num_vertices.const_data_ptr<int64_t>()[b];
  TORCH_CHECK(vertices >= 0 && vertices <= rows, "permutohedral_filter: num_vertices[", b, "] must be in [0, M] = [0, ",
              rows, "] (M = neighbours.size(1)), got ", vertices);
  return {c.values.const_data_ptr<scalar_t>() + b * points * channels,
          c.vertex_ids.const_data_ptr<int32_t>() + b * points * (dims + 1),
          c.weights.const_data_ptr<scalar_t>() + b * points * (dims + 1),
          c.neighbours.const_data_ptr<int32_t>() + b * rows * (dims + 1) * 2,
          c.splat_offsets.const_data_ptr<int32_t>() + b * (rows + 1),
          c.splat_entries.const_data_ptr<int32_t>() + b * points * (dims + 1),
          points,
          channels,
          vertices,
          dims};
}

// The splat and the blur of image b: its vertex values, [vertices, C].
template <typename scalar_t>
std::vector<scalar_t> blurred_vertex_values(const FilterImage<scalar_t>& im, bool adjoint, int64_t b) {
  const int64_t vertices = im.vertices, channels = im.channels, dims = im.dims;
  std::vector<scalar_t> current(static_cast<size_t>(vertices * channels)), next(current.size());
  const int64_t vertex_grain = std::max<int64_t>(1, 8192 / channels);
  // Splat tasks of equal entry counts (a few vertices carry most entries: a vertex count split would not
  // balance), bounded by binary search on the offsets.
  const std::vector<int64_t> bounds = balanced_vertex_bounds(im.offsets, vertices, kSplatTasks);
  int64_t bad = parallel_checked(kSplatTasks, 1, [&](int64_t begin, int64_t end) {
    int64_t first_bad = -1;
    for (int64_t task = begin; task < end && first_bad < 0; ++task)
      first_bad = SEGOPS_CPU_LOOP(splat_any_stride)(im, bounds[task], bounds[task + 1], current.data());
    return first_bad;
  });
  TORCH_CHECK(bad < 0, "permutohedral_filter: the splat list of vertex ", bad, " of image ", b,
              " is outside splat_entries or names an entry outside [0, N*(d+1)) = [0, ", im.points * (dims + 1), ")");
  for (int64_t step = 0; step <= dims; ++step) {
    const int j = static_cast<int>(adjoint ? dims - step : step);
    bad = parallel_checked(vertices, vertex_grain, [&](int64_t begin, int64_t end) {
      return SEGOPS_CPU_LOOP(blur_range)(im, j, begin, end, current.data(), next.data());
    });
    TORCH_CHECK(bad < 0, "permutohedral_filter: neighbours[", b, ", ", bad, ", ", j,
                "] must be vertices in [-1, num_vertices) = [-1, ", vertices, ")");
    std::swap(current, next);
  }
  return current;
}

// The slice's error: the first point of image b with a vertex outside its lattice.
void check_sliced(int64_t bad, int64_t b, int64_t vertices) {
  TORCH_CHECK(bad < 0, "permutohedral_filter: vertex_ids[", b, ", ", bad,
              "] must be vertices in [0, num_vertices) = [0, ", vertices, ")");
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values_in, const at::Tensor& vertex_ids_in,
                                    const at::Tensor& weights_in, const at::Tensor& neighbours_in,
                                    const at::Tensor& splat_offsets_in, const at::Tensor& splat_entries_in,
                                    const at::Tensor& num_vertices_in, bool adjoint) {
  const CheckedFilter c = checked_lattice_filter(values_in, vertex_ids_in, weights_in, neighbours_in, splat_offsets_in,
                                                 splat_entries_in, num_vertices_in);
  const int64_t points = c.shape.points, channels = c.values.size(2);
  at::Tensor out = at::empty_like(c.values);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(c.values.scalar_type(), "permutohedral_filter_cpu", [&] {
    for (int64_t b = 0; b < c.shape.batch; ++b) {
      const FilterImage<scalar_t> im = filter_image<scalar_t>(c, b);
      const std::vector<scalar_t> vertex_values = blurred_vertex_values(im, adjoint, b);
      scalar_t* image_out = out.mutable_data_ptr<scalar_t>() + b * points * channels;
      check_sliced(parallel_checked(points, std::max<int64_t>(1, 4096 / channels),
                                    [&](int64_t begin, int64_t end) {
                                      return SEGOPS_CPU_LOOP(slice_range)(im, begin, end, vertex_values.data(),
                                                                          image_out + begin * channels);
                                    }),
                   b, im.vertices);
    }
  });
  return out;
}

// Blocks of points per parallel chunk in the mean-field step and the softmax: about 240 chunks at 500x375, so that a
// thread the system pauses leaves little for the other to wait on.
constexpr int64_t kBlocksPerChunk = 4;

// The dense CRF's mean-field step with Potts compatibility, fused: dense_crf_softmax(unary, [filter_k(q)], weights)
// with each block of points sliced from every lattice into a small buffer and updated there, so the messages are
// never written out: per step at 500x375 with 21 labels, 63 MB less memory traffic and 32 MB less fresh memory.
// The same arithmetic in the same order as the two ops, so bitwise their result. labels_first: the result as
// [B, L, N] (the last step's, so that dense_crf's [B, L, H, W] result needs no transposing copy), each block's rows
// written through a buffer.
at::Tensor dense_crf_step_cpu(const at::Tensor& unary_in, const at::Tensor& q_in, const at::Tensor& kernel_weights_in,
                              at::TensorList vertex_ids, at::TensorList weights, at::TensorList neighbours,
                              at::TensorList splat_offsets, at::TensorList splat_entries, at::TensorList num_vertices,
                              bool labels_first) {
  const CheckedCrfStep c = checked_crf_step(unary_in, q_in, kernel_weights_in, vertex_ids, weights, neighbours,
                                            splat_offsets, splat_entries, num_vertices);
  const at::Tensor& unary = c.unary;
  at::Tensor out =
      labels_first ? at::empty({unary.size(0), unary.size(2), unary.size(1)}, unary.options()) : at::empty_like(unary);
  if (out.numel() == 0) return out;
  const int64_t kernels = static_cast<int64_t>(c.lattices.size());
  const int64_t points = unary.size(1), labels = unary.size(2);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "dense_crf_step_cpu", [&] {
    for (int64_t b = 0; b < unary.size(0); ++b) {
      std::vector<FilterImage<scalar_t>> images;
      std::vector<std::vector<scalar_t>> vertex_values;
      for (const CheckedFilter& lattice : c.lattices) {
        images.push_back(filter_image<scalar_t>(lattice, b));
        vertex_values.push_back(blurred_vertex_values(images.back(), /*adjoint=*/false, b));
      }
      const scalar_t* image_unary = unary.const_data_ptr<scalar_t>() + b * points * labels;
      scalar_t* image_out = out.mutable_data_ptr<scalar_t>() + b * points * labels;
      // Blocks of about 4096 values per message, in cache from the slice to the update.
      const int64_t block = std::max<int64_t>(1, 4096 / labels);
      FirstBad bad;
      const int64_t chunk = block * kBlocksPerChunk;
      std::vector<std::vector<scalar_t>> worker_buffers(static_cast<size_t>(chunk_workers(points, chunk)));
      parallel_chunks_by_worker(points, chunk, [&](int64_t worker, int64_t begin, int64_t end) {
        // The messages of each lattice, then (labels_first) the block's rows before they are transposed.
        std::vector<scalar_t>& buffer = worker_buffers[worker];
        buffer.resize(static_cast<size_t>((kernels + (labels_first ? 1 : 0)) * block * labels));
        const scalar_t* pointers[kMaxCrfKernels];
        for (int64_t k = 0; k < kernels; ++k) pointers[k] = buffer.data() + k * block * labels;
        for (int64_t first = begin; first < end; first += block) {
          const int64_t last = std::min(end, first + block);
          for (int64_t k = 0; k < kernels; ++k) {
            const int64_t first_bad = SEGOPS_CPU_LOOP(slice_range)(images[k], first, last, vertex_values[k].data(),
                                                                   buffer.data() + k * block * labels);
            if (first_bad >= 0) bad.record(k * points + first_bad);
          }
          scalar_t* rows = labels_first ? buffer.data() + kernels * block * labels : image_out + first * labels;
          SEGOPS_CPU_LOOP(crf_softmax_rows)(image_unary + first * labels, pointers,
                                            c.kernel_weights.const_data_ptr<scalar_t>(), static_cast<int>(kernels),
                                            labels, 0, last - first, rows);
          if (labels_first) SEGOPS_CPU_LOOP(rows_to_planes)(rows, last - first, labels, image_out + first, points);
        }
      });
      if (bad.get() >= 0) check_sliced(bad.get() % points, b, images[bad.get() / points].vertices);
    }
  });
  return out;
}

at::Tensor dense_crf_softmax_cpu(const at::Tensor& unary_in, at::TensorList messages_in, const at::Tensor& weights_in) {
  const CheckedCrfSoftmax c = checked_crf_softmax(unary_in, messages_in, weights_in);
  const at::Tensor &unary = c.unary, &weights = c.weights;
  const std::vector<at::Tensor>& messages = c.messages;
  at::Tensor out = at::empty_like(unary);
  const int64_t labels = unary.size(2), rows = unary.numel() / std::max<int64_t>(labels, 1);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "dense_crf_softmax_cpu", [&] {
    const scalar_t* pointers[kMaxCrfKernels];
    for (size_t k = 0; k < messages.size(); ++k) pointers[k] = messages[k].const_data_ptr<scalar_t>();
    // Blocks of about 4096 values, in cache across the update's passes.
    const int64_t block = std::max<int64_t>(1, 4096 / labels);
    parallel_chunks(rows, block * kBlocksPerChunk, [&](int64_t begin, int64_t end) {
      for (int64_t first = begin; first < end; first += block) {
        SEGOPS_CPU_LOOP(crf_softmax_rows)(unary.const_data_ptr<scalar_t>(), pointers,
                                          weights.const_data_ptr<scalar_t>(), static_cast<int>(messages.size()), labels,
                                          first, std::min(end, first + block), out.mutable_data_ptr<scalar_t>());
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("dense_crf_softmax", &dense_crf_softmax_cpu);
  m.impl("_dense_crf_step", &dense_crf_step_cpu);
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace segops
