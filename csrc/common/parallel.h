#pragma once
// Dynamic scheduling over at::parallel_for's threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace segops {

// Runs fn(begin, end) over [0, n) in chunks of `chunk` items, on at::parallel_for's threads, each thread taking the
// next chunk from a shared counter. at::parallel_for gives each thread one fixed share, so a thread that the system
// pauses (another process on its core) holds up the op for its whole share; here the others take over its remaining
// chunks. fn's results must not depend on which thread runs a chunk, nor on the order of the chunks. Inside another
// parallel region (where at::parallel_for runs serially) the one thread takes every chunk.
template <class Fn>
void parallel_chunks(int64_t n, int64_t chunk, const Fn& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(chunks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

}  // namespace segops
