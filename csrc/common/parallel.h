#pragma once
// Dynamic scheduling over at::parallel_for's threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace segops {

// The chunks of n items, `chunk` (at least 1) at a time.
inline int64_t chunk_count(int64_t n, int64_t chunk) {
  return n > 0 ? (n + std::max<int64_t>(chunk, 1) - 1) / std::max<int64_t>(chunk, 1) : 0;
}

// How many workers parallel_chunks_by_worker runs for n items in chunks of `chunk`: its worker argument is below this.
inline int64_t chunk_workers(int64_t n, int64_t chunk) {
  return std::max<int64_t>(1, std::min<int64_t>(chunk_count(n, chunk), at::get_num_threads()));
}

// Runs fn(worker, begin, end) over [0, n) in chunks of `chunk` items, on at::parallel_for's threads, each thread
// taking the next chunk from a shared counter. at::parallel_for gives each thread one fixed share, so a thread that
// the system pauses (another process on its core) holds up the op for its whole share; here the others take over
// its remaining chunks. worker (in [0, chunk_workers(n, chunk))) is the same for all the chunks one thread runs in
// turn, never for two running at once: an index for per-thread scratch. fn's results must not depend on which
// worker runs a chunk, nor on the chunks' order. Inside another parallel region (where at::parallel_for runs
// inline) one worker takes every chunk.
template <class Fn>
void parallel_chunks_by_worker(int64_t n, int64_t chunk, const Fn& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = chunk_count(n, chunk);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, chunk_workers(n, chunk), 1, [&](int64_t first_worker, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(first_worker, c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

// parallel_chunks_by_worker for an fn(begin, end) that needs no scratch of its own.
template <class Fn>
void parallel_chunks(int64_t n, int64_t chunk, const Fn& fn) {
  parallel_chunks_by_worker(n, chunk, [&](int64_t, int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace segops
