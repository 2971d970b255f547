#pragma once
// The permutohedral lattice of Adams, Baek and Davis (2010), as pydensecrf builds and uses it, in functions that
// the CPU launchers and the CUDA kernels both call.
//
// A lattice over N points with d features each is held as plain tensors (segops/ops/dense_crf.py):
//  - per point, its d+1 enclosing simplex vertices (vertex ids) and barycentric weights, entry e = point*(d+1)+r;
//  - per vertex, its two neighbours along each of the d+1 lattice directions (-1 where the lattice has none);
//  - the splat lists: the entries of each vertex in increasing entry order (a CSR: offsets, entries), so that the
//    splat is a gather, free of atomics and of a summation order that depends on scheduling.
// Vertex v is numbered by the first entry (in entry order) that lies on it, on every backend, so the CPU and the
// GPU build the same lattice. Filtering is splat, a [1/2 1 1/2] blur along directions 0..d, slice; the adjoint
// (the filter's transpose) blurs along d..0.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace segops {

// Messages (kernels) a mean-field update adds: pydensecrf and DeepLab use two.
constexpr int kMaxCrfKernels = 8;

// Features per point; the per-point arrays of the lattice math live on the stack (registers on the GPU).
constexpr int kLatticeMaxFeatures = 16;

// A scaled feature's bound: elevated coordinates (at most 2d times it) and lattice keys then stay far from int32
// overflow.
constexpr double kLatticeMaxCoordinate = 1 << 24;

// The scale of each elevated feature (E's diagonal, p. 5 of Adams et al.) times the inverse standard deviation of
// the blur (p. 6), as pydensecrf computes it; filled on the host in double and passed by value to the kernels.
template <typename acc_t>
struct LatticeScales {
  acc_t scale[kLatticeMaxFeatures];
  int dims;
};

template <typename acc_t>
LatticeScales<acc_t> lattice_scales(int dims) {
  LatticeScales<acc_t> s{};
  s.dims = dims;
  const double inv_std_dev = std::sqrt(2.0 / 3.0) * (dims + 1);
  for (int i = 0; i < dims; ++i)
    s.scale[i] = static_cast<acc_t>(1.0 / std::sqrt(double((i + 2) * (i + 1))) * inv_std_dev);
  return s;
}

// pydensecrf's "magic scaling constant" of the slice: the blur's total weight relative to a unit Gaussian.
template <typename acc_t>
SEGOPS_HOST_DEVICE acc_t lattice_slice_scale(int dims) {
  return acc_t(1) / (acc_t(1) + acc_t(1) / acc_t(int64_t(1) << dims));
}

// C's round() (halves away from zero, as pydensecrf rounds) for |x| < 2^30, without a libm call: the truncation
// is exact and x - trunc(x) is exact, so the result is too.
template <typename acc_t>
SEGOPS_HOST_DEVICE int lattice_round(acc_t x) {
  int rounded = static_cast<int>(x);
  const acc_t fraction = x - static_cast<acc_t>(rounded);
  if (fraction >= acc_t(0.5))
    ++rounded;
  else if (fraction <= acc_t(-0.5))
    --rounded;
  return rounded;
}

// A scaled feature the lattice can hold: finite and within kLatticeMaxCoordinate (NaN fails the comparisons).
template <typename acc_t>
SEGOPS_HOST_DEVICE bool lattice_coordinate_in_range(acc_t scaled) {
  return scaled < acc_t(kLatticeMaxCoordinate) && scaled > -acc_t(kLatticeMaxCoordinate);
}

// Embeds one point (features f[0..d), read at f[k * stride]) in the lattice: writes the d integer coordinates of
// each of its d+1 simplex vertices to keys[r * d + k] and their barycentric weights to weights[r]. Returns false,
// writing nothing, when a feature is not finite or the point lies too far out for int32 keys. kDims > 0 fixes d at
// compile time (the GPU's kernels for small d): every loop then unrolls and every array index is a constant, so the
// arrays live in registers, not in a stack frame; kDims = 0 reads d from s.dims.
template <int kDims = 0, typename scalar_t, typename acc_t>
SEGOPS_HOST_DEVICE bool lattice_embed(const scalar_t* f, int64_t stride, const LatticeScales<acc_t>& s, int32_t* keys,
                                      acc_t* weights) {
  constexpr int kCapacity = kDims > 0 ? kDims : kLatticeMaxFeatures;
  const int d = kDims > 0 ? kDims : s.dims;
  acc_t elevated[kCapacity + 1], rem0[kCapacity + 1];
  int rank[kCapacity + 1];
  // Elevate onto the hyperplane sum(x) = 0: y = E f.
  acc_t sum_scaled = 0;
#pragma unroll
  for (int j = kCapacity; j > 0; --j) {
    if (j > d) continue;
    const acc_t cf = static_cast<acc_t>(f[(j - 1) * stride]) * s.scale[j - 1];
    if (!lattice_coordinate_in_range(cf)) return false;
    elevated[j] = sum_scaled - acc_t(j) * cf;
    sum_scaled += cf;
  }
  elevated[0] = sum_scaled;
  // The nearest remainder-0 point, by rounding each coordinate to a multiple of d+1.
  const acc_t down_factor = acc_t(1) / acc_t(d + 1);
  const acc_t up_factor = acc_t(d + 1);
  int sum = 0;
#pragma unroll
  for (int i = 0; i <= kCapacity; ++i) {
    if (i > d) break;
    const int rounded = lattice_round(down_factor * elevated[i]);
    rem0[i] = static_cast<acc_t>(rounded) * up_factor;
    sum += rounded;
    rank[i] = 0;
  }
  // The rank of each coordinate's remainder in decreasing order: it names the enclosing simplex.
#pragma unroll
  for (int i = 0; i < kCapacity; ++i) {
    if (i >= d) break;
    const acc_t di = elevated[i] - rem0[i];
#pragma unroll
    for (int j = i + 1; j <= kCapacity; ++j) {
      if (j > d) break;
      if (di < elevated[j] - rem0[j])
        ++rank[i];
      else
        ++rank[j];
    }
  }
  // Bring the remainder-0 point back onto the hyperplane when the rounding left it off (sum != 0).
#pragma unroll
  for (int i = 0; i <= kCapacity; ++i) {
    if (i > d) break;
    rank[i] += sum;
    if (rank[i] < 0) {
      rank[i] += d + 1;
      rem0[i] += acc_t(d + 1);
    } else if (rank[i] > d) {
      rank[i] -= d + 1;
      rem0[i] -= acc_t(d + 1);
    }
  }
  // Barycentric coordinates (p. 10 of Adams et al.): coordinate i adds its remainder to b[d - rank[i]] and takes it
  // from b[d - rank[i] + 1]. The ranks are a permutation of 0..d, so b[r] gets at most one of each: gathered here
  // (b[r] = v(rank d - r) - v(rank d - r + 1)), with no index computed from data.
  acc_t b_last = 0;  // b[d + 1]: minus the remainder of rank 0
#pragma unroll
  for (int i = 0; i <= kCapacity; ++i) {
    if (i > d) break;
    if (rank[i] == 0) b_last = acc_t(0) - (elevated[i] - rem0[i]) * down_factor;
  }
#pragma unroll
  for (int r = 0; r <= kCapacity; ++r) {
    if (r > d) break;
    acc_t plus = 0, minus = 0;
    bool has_plus = false, has_minus = false;
#pragma unroll
    for (int i = 0; i <= kCapacity; ++i) {
      if (i > d) break;
      const acc_t v = (elevated[i] - rem0[i]) * down_factor;
      if (rank[i] == d - r) plus = v, has_plus = true;
      if (rank[i] == d - r + 1) minus = v, has_minus = true;
    }
    acc_t b = 0;
    if (has_plus) b += plus;
    if (has_minus) b -= minus;
    weights[r] = r == 0 ? b + (acc_t(1) + b_last) : b;
    // Vertex r of the simplex is the remainder-0 point plus the canonical simplex's vertex r, permuted by rank.
#pragma unroll
    for (int i = 0; i < kCapacity; ++i) {
      if (i >= d) break;
      const int canonical = rank[i] <= d - r ? r : r - (d + 1);
      keys[r * d + i] = static_cast<int32_t>(rem0[i]) + canonical;
    }
  }
  return true;
}

// The hash of a key of d coordinates (a 64-bit multiplicative mix, so neighbouring keys spread over the table).
SEGOPS_HOST_DEVICE uint64_t lattice_key_hash(const int32_t* key, int d) {
  uint64_t h = 0;
  for (int k = 0; k < d; ++k) {
    h = (h + static_cast<uint32_t>(key[k])) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  }
  return h;
}

SEGOPS_HOST_DEVICE bool lattice_keys_equal(const int32_t* a, const int32_t* b, int d) {
  for (int k = 0; k < d; ++k)
    if (a[k] != b[k]) return false;
  return true;
}

// Open addressing with linear probing: table[slot] is an entry index (its key at keys[entry * d]) or -1. Returns
// the slot holding `key`, or the empty slot where it would go. The table has a power-of-two capacity of at least
// twice the entries, so an empty slot always ends the probe.
SEGOPS_HOST_DEVICE int64_t lattice_table_find(const int32_t* table, int64_t capacity, const int32_t* keys,
                                              const int32_t* key, int d) {
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  uint64_t slot = lattice_key_hash(key, d) & mask;
  while (true) {
    const int32_t entry = table[slot];
    if (entry < 0 || lattice_keys_equal(keys + static_cast<int64_t>(entry) * d, key, d))
      return static_cast<int64_t>(slot);
    slot = (slot + 1) & mask;
  }
}

// The key of vertex `key`'s neighbour along lattice direction j, step +1 (n1) or -1 (n2): every coordinate moves
// by -step, coordinate j by +step * d (the last, implicit, coordinate is j = d).
SEGOPS_HOST_DEVICE void lattice_neighbour_key(const int32_t* key, int d, int j, int step, int32_t* out) {
  for (int k = 0; k < d; ++k) out[k] = key[k] - step;
  if (j < d) out[j] = key[j] + step * d;
}

// One vertex-channel of the blur along one direction: v + (n1 + n2) / 2, a missing neighbour counting as zero.
template <typename acc_t>
SEGOPS_HOST_DEVICE acc_t lattice_blur_value(acc_t self, acc_t first, acc_t second) {
  return self + acc_t(0.5) * (first + second);
}

// e^x for the softmax's x - max(x) <= 0, in float without a libm call, so that the CPU loop vectorises (the same
// function on every backend): Cody-Waite reduction x = n ln 2 + r, Cephes' degree-5 polynomial for e^r (about 2 ulp),
// 2^n through the exponent bits. Below -87 it returns e^-87 (a probability under 1e-37, not a denormal).
SEGOPS_HOST_DEVICE float crf_exp(float x) {
  x = fmaxf(x, -87.0f);  // branch-free (fmaxf, floorf), so that the loop over labels vectorises
  const float nf = floorf(x * 1.44269504088896341f + 0.5f);
  const int n = static_cast<int>(nf);
  const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float two_n = __int_as_float(bits);
#elif defined(__CUDACC__)  // nvcc's host pass: not a hot path
  float two_n;
  memcpy(&two_n, &bits, sizeof(two_n));
#else                      // a bit cast the vectoriser sees through (a memcpy through memory it does not)
  const float two_n = __builtin_bit_cast(float, bits);
#endif
  return y * two_n;
}
SEGOPS_HOST_DEVICE double crf_exp(double x) {
  return ::exp(x);
}

// One pixel's logit for label index `index`: unary + w0 m0 + w1 m1 + ..., summed in the order Python's expression
// would. `messages(k)` is message k's base pointer. The loop over k runs to the bound kMaxCrfKernels, unrolled, so that
// a GPU reads the message pointers from its kernel parameters rather than from a copy on the stack.
template <typename scalar_t, class Messages>
SEGOPS_HOST_DEVICE scalar_t crf_logit(const scalar_t* unary, const Messages& messages, const scalar_t* weights,
                                      int kernels, int64_t index) {
  scalar_t value = unary[index];
#pragma unroll
  for (int k = 0; k < kMaxCrfKernels; ++k) {
    if (k < kernels) value = value + weights[k] * messages(k)[index];
  }
  return value;
}

// One pixel's mean-field update: out[l] = softmax(logits)[l] over its `labels` values, which start at `first` in
// unary, in each message and in out. Nothing is kept between the passes (max, sum of exponentials, outputs): each
// recomputes the logits from the inputs, so a thread needs no scratch memory and stores only its outputs. The
// arithmetic is the CPU loops' (dense_crf_cpu_loops.inc), operation for operation.
template <typename scalar_t, class Messages>
SEGOPS_HOST_DEVICE void crf_softmax_row(const scalar_t* unary, const Messages& messages, const scalar_t* weights,
                                        int kernels, int64_t first, int64_t labels, scalar_t* out) {
  scalar_t top = crf_logit(unary, messages, weights, kernels, first);
  for (int64_t l = 1; l < labels; ++l) {
    const scalar_t value = crf_logit(unary, messages, weights, kernels, first + l);
    top = value > top ? value : top;
  }
  scalar_t sum = 0;
  for (int64_t l = 0; l < labels; ++l) sum += crf_exp(crf_logit(unary, messages, weights, kernels, first + l) - top);
  for (int64_t l = 0; l < labels; ++l) {
    out[first + l] = crf_exp(crf_logit(unary, messages, weights, kernels, first + l) - top) / sum;
  }
}

}  // namespace segops
