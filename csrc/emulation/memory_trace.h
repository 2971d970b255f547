#pragma once
// Test-only: the warp memory tracer of the kernel emulation (segops._emulation built with SEGOPS_MEMTRACE).
//
// How accesses are seen: the traced build compiles the emulated kernels with gcc's KASAN instrumentation in its
// outline form (-fsanitize=kernel-address with asan-instrumentation-with-call-threshold=0), which calls
// __asan_load<N>_noabort(address) / __asan_store<N>_noabort(address) before every load and store. KASAN mode needs
// no sanitizer runtime: those functions are defined here, and record. gcc is the compiler the project already
// builds with, so no second toolchain; every access is seen without touching the kernels' source, where an accessor
// would have to wrap each of their loads and stores (and a forgotten one would pass unseen).
//
// What is recorded: while a traced launch runs, each emulated thread's global accesses in program order (addresses
// on the running OS thread's stack, the kernels' locals and by-value parameters, are not global memory and are
// skipped), and the atomics (SEGOPS_ATOMIC_* call memtrace::atomic first). Threads are grouped into warps of 32
// consecutive linear thread ids of a block, and the lanes' k-th executions of one access site (the hook's return
// address: one load or store instruction of the kernel) are paired into one warp-level access, as a GPU issues an
// instruction for its active lanes together (lanes that skip a tap at a border do not shift the pairing). For each: the
// bytes requested, the distinct 32-byte sectors touched, and the fewest sectors its distinct bytes could occupy; sector
// efficiency = fewest / touched (Nsight Compute's "sectors per request" against the ideal). Atomics: their count, and
// the ones that hit an address another lane of the warp hits too.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cxxabi.h>
#include <initializer_list>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#define SEGOPS_NOT_TRACED __attribute__((no_sanitize_address, noinline))

namespace segops::memtrace {

constexpr int kWarpSize = 32;
// Sampling traces runs of this many consecutive warps, so that the reuse between neighbouring warps is seen.
constexpr int64_t kSampleRun = 64;
constexpr uintptr_t kSectorBytes = 32;

enum class Kind : uint8_t { load, store, atomic };

struct Access {
  uintptr_t address;
  const void* site;  // the instrumented instruction's address
  uint32_t size;
  Kind kind;
};

// Warp-level accesses of one kind, summed over a launch.
struct Totals {
  int64_t requests = 0, requested_bytes = 0, sectors = 0, fewest_sectors = 0;
};

struct LaunchRecord {
  std::string kernel;
  Totals loads, stores;
  int64_t atomics = 0, same_address_atomics = 0;
  // Distinct sectors over the launch (loads, stores and atomics): DRAM traffic if caches kept every sector from its
  // first use to its last, the lower bound the GPU's L1 and L2 approach for stencils and small gathers.
  int64_t distinct_sectors = 0;
};

struct State {
  bool enabled = false;     // between memtrace_begin and memtrace_end
  int64_t warp_stride = 1;  // trace one run of kSampleRun warps in warp_stride (large launches are sampled)
  std::unordered_set<uintptr_t> launch_sectors;
  // The emulation's own per-thread state (threadIdx and the like, thread-locals the launch writes and the kernels
  // read): not global memory. Plain arrays: record() may call nothing instrumented before it sets in_hook.
  static constexpr int kMaxIgnored = 8;
  uintptr_t ignored_low[kMaxIgnored] = {}, ignored_high[kMaxIgnored] = {};
  int ignored_count = 0;
  bool in_launch = false;
  bool in_hook = false;
  uintptr_t stack_low = 0, stack_high = 0;
  int lane = -1;
  int64_t warp = -1;
  std::array<std::vector<Access>, kWarpSize> lanes;
  uintptr_t skip_address = 0;  // an emulated atomic's own load and store, already recorded as the atomic
  int skip_count = 0;
  LaunchRecord current;
  std::vector<LaunchRecord> launches;
};

// One tracer per process (the emulation runs a launch on one OS thread at a time).
inline State trace_state;

SEGOPS_NOT_TRACED inline State& state() {
  return trace_state;
}

SEGOPS_NOT_TRACED inline void record(uintptr_t address, uint32_t size, Kind kind, const void* site) {
  State& s = state();
  if (!s.in_launch || s.in_hook || s.lane < 0) return;
  if (address >= s.stack_low && address < s.stack_high) return;
  for (int i = 0; i < s.ignored_count; ++i) {
    if (address >= s.ignored_low[i] && address < s.ignored_high[i]) return;
  }
  if (s.skip_count > 0 && address == s.skip_address) {
    --s.skip_count;
    return;
  }
  s.in_hook = true;
  s.lanes[s.lane].push_back({address, site, size, kind});
  s.in_hook = false;
}

// Called by SEGOPS_ATOMIC_* before the emulated read-modify-write, which is then not recorded as a load and a store.
SEGOPS_NOT_TRACED inline void atomic(const void* address, uint32_t size) {
  State& s = state();
  if (!s.in_launch || s.in_hook) return;
  const auto where = reinterpret_cast<uintptr_t>(address);
  s.skip_count = 0;  // a failed compare-and-swap stores nothing: its skip must not outlive it
  record(where, size, Kind::atomic, __builtin_return_address(0));
  s.skip_address = where;
  s.skip_count = s.lane >= 0 ? 2 : 0;
}

// Adds one warp-level access (the accesses of one kind among the lanes' k-th) to totals.
SEGOPS_NOT_TRACED inline void add_request(std::vector<Access>& group, Totals& totals) {
  if (group.empty()) return;
  std::vector<uintptr_t> sectors;
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (const Access& a : group) {
    totals.requested_bytes += a.size;
    for (uintptr_t sector = a.address / kSectorBytes; sector <= (a.address + a.size - 1) / kSectorBytes; ++sector) {
      sectors.push_back(sector);
      state().launch_sectors.insert(sector);
    }
    ranges.push_back({a.address, a.address + a.size});
  }
  std::sort(sectors.begin(), sectors.end());
  totals.sectors += std::unique(sectors.begin(), sectors.end()) - sectors.begin();
  // Distinct bytes: the union of the ranges (lanes that read one address share its bytes).
  std::sort(ranges.begin(), ranges.end());
  uintptr_t distinct = 0, covered_to = 0;
  for (const auto& [begin, end] : ranges) {
    const uintptr_t from = std::max(begin, covered_to);
    if (end > from) distinct += end - from;
    covered_to = std::max(covered_to, end);
  }
  totals.fewest_sectors += (distinct + kSectorBytes - 1) / kSectorBytes;
  totals.requests += 1;
}

SEGOPS_NOT_TRACED inline void flush_warp() {
  State& s = state();
  s.in_hook = true;
  // (site, the lane's execution count of it, access): the lanes' k-th executions of a site form one request.
  struct Executed {
    const void* site;
    int64_t occurrence;
    Access access;
  };
  std::vector<Executed> executed;
  for (const auto& lane : s.lanes) {
    std::vector<std::pair<const void*, int64_t>> counts;
    for (const Access& a : lane) {
      auto found = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == a.site; });
      if (found == counts.end()) found = counts.insert(counts.end(), {a.site, 0});
      executed.push_back({a.site, found->second++, a});
    }
  }
  std::stable_sort(executed.begin(), executed.end(), [](const Executed& x, const Executed& y) {
    return x.site != y.site ? x.site < y.site : x.occurrence < y.occurrence;
  });
  std::vector<Access> loads, stores, atomics;
  for (size_t first = 0; first < executed.size();) {
    size_t last = first;
    while (last < executed.size() && executed[last].site == executed[first].site &&
           executed[last].occurrence == executed[first].occurrence) {
      ++last;
    }
    loads.clear();
    stores.clear();
    atomics.clear();
    for (size_t i = first; i < last; ++i) {
      const Access& a = executed[i].access;
      (a.kind == Kind::load ? loads : a.kind == Kind::store ? stores : atomics).push_back(a);
    }
    first = last;
    add_request(loads, s.current.loads);
    add_request(stores, s.current.stores);
    s.current.atomics += static_cast<int64_t>(atomics.size());
    std::vector<uintptr_t> addresses;
    for (const Access& a : atomics) {
      addresses.push_back(a.address);
      s.launch_sectors.insert(a.address / kSectorBytes);
    }
    std::sort(addresses.begin(), addresses.end());
    const auto distinct = std::unique(addresses.begin(), addresses.end()) - addresses.begin();
    s.current.same_address_atomics += static_cast<int64_t>(addresses.size()) - distinct;
  }
  for (auto& lane : s.lanes) lane.clear();
  s.in_hook = false;
}

// The emulated launch's calls (common/emulation.h, SEGOPS_MEMTRACE builds). ignored: the emulation's thread-locals.
SEGOPS_NOT_TRACED inline void launch_begins(std::initializer_list<std::pair<const void*, size_t>> ignored) {
  State& s = state();
  if (!s.enabled) return;
  s.ignored_count = 0;
  for (const auto& [address, size] : ignored) {
    if (s.ignored_count == State::kMaxIgnored) break;
    s.ignored_low[s.ignored_count] = reinterpret_cast<uintptr_t>(address);
    s.ignored_high[s.ignored_count++] = reinterpret_cast<uintptr_t>(address) + size;
  }
  pthread_attr_t attributes;
  void* stack = nullptr;
  size_t size = 0;
  pthread_getattr_np(pthread_self(), &attributes);
  pthread_attr_getstack(&attributes, &stack, &size);
  pthread_attr_destroy(&attributes);
  s.stack_low = reinterpret_cast<uintptr_t>(stack);
  s.stack_high = s.stack_low + size;
  s.current = LaunchRecord{};
  s.launch_sectors.clear();
  for (auto& lane : s.lanes) lane.clear();
  s.skip_count = 0;
  s.lane = -1;
  s.warp = -1;
  s.in_launch = true;
}

SEGOPS_NOT_TRACED inline void thread_begins(int64_t block, int64_t thread_in_block, int64_t threads_per_block) {
  State& s = state();
  if (!s.in_launch) return;
  const int64_t warps_per_block = (threads_per_block + kWarpSize - 1) / kWarpSize;
  const int64_t warp = block * warps_per_block + thread_in_block / kWarpSize;
  if (warp != s.warp) {
    flush_warp();
    s.warp = warp;
  }
  s.lane = (warp / kSampleRun) % s.warp_stride == 0 ? static_cast<int>(thread_in_block % kWarpSize) : -1;
  s.skip_count = 0;
}

SEGOPS_NOT_TRACED inline std::string symbol_name(const void* function) {
  Dl_info info{};
  if (dladdr(function, &info) == 0 || info.dli_sname == nullptr) return "(unknown kernel)";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status),
                                                  std::free);
  return status == 0 && readable ? std::string(readable.get()) : std::string(info.dli_sname);
}

SEGOPS_NOT_TRACED inline void launch_ends(const void* kernel) {
  State& s = state();
  if (!s.in_launch) return;
  flush_warp();
  s.in_launch = false;
  s.lane = -1;
  s.current.distinct_sectors = static_cast<int64_t>(s.launch_sectors.size());
  s.launch_sectors.clear();
  s.current.kernel = symbol_name(kernel);
  s.launches.push_back(std::move(s.current));
}

// Ends a launch that an exception left: nothing more is recorded, and its partial record is dropped.
struct LaunchScope {
  SEGOPS_NOT_TRACED ~LaunchScope() {
    State& s = state();
    if (!s.in_launch) return;
    s.in_launch = false;
    s.lane = -1;
    s.skip_count = 0;
    for (auto& lane : s.lanes) lane.clear();
  }
};

}  // namespace segops::memtrace

// Hook an emulated atomic (see kernel.h) before it runs.
#define SEGOPS_MEMTRACE_ATOMIC(address) ::segops::memtrace::atomic((address), sizeof(*(address)))

// The outline KASAN hooks that gcc calls before each load and store of the traced build (defined once: this header is
// included by emulated_ops.cpp only, in the SEGOPS_MEMTRACE build). Outside a traced launch they return at once.
extern "C" {
#define SEGOPS_MEMTRACE_HOOK(bytes)                                                                          \
  SEGOPS_NOT_TRACED void __asan_load##bytes##_noabort(void* address) {                                       \
    ::segops::memtrace::record(reinterpret_cast<uintptr_t>(address), bytes, ::segops::memtrace::Kind::load,  \
                               __builtin_return_address(0));                                                 \
  }                                                                                                          \
  SEGOPS_NOT_TRACED void __asan_store##bytes##_noabort(void* address) {                                      \
    ::segops::memtrace::record(reinterpret_cast<uintptr_t>(address), bytes, ::segops::memtrace::Kind::store, \
                               __builtin_return_address(0));                                                 \
  }
SEGOPS_MEMTRACE_HOOK(1)
SEGOPS_MEMTRACE_HOOK(2)
SEGOPS_MEMTRACE_HOOK(4)
SEGOPS_MEMTRACE_HOOK(8)
SEGOPS_MEMTRACE_HOOK(16)
#undef SEGOPS_MEMTRACE_HOOK
SEGOPS_NOT_TRACED void __asan_loadN_noabort(void* address, long bytes) {
  ::segops::memtrace::record(reinterpret_cast<uintptr_t>(address), static_cast<uint32_t>(bytes),
                             ::segops::memtrace::Kind::load, __builtin_return_address(0));
}
SEGOPS_NOT_TRACED void __asan_storeN_noabort(void* address, long bytes) {
  ::segops::memtrace::record(reinterpret_cast<uintptr_t>(address), static_cast<uint32_t>(bytes),
                             ::segops::memtrace::Kind::store, __builtin_return_address(0));
}
SEGOPS_NOT_TRACED void __asan_handle_no_return() {}
// The instrumentation's checks of static initialisation order: nothing to check without the runtime.
SEGOPS_NOT_TRACED void __asan_before_dynamic_init(const char*) {}
SEGOPS_NOT_TRACED void __asan_after_dynamic_init() {}
}
