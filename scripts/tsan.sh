#!/usr/bin/env bash
# The race check: the kernel emulation (the CUDA kernels compiled for the host) built so that each launch runs its
# (block, thread) pairs in a shuffled order on several OS threads with real atomics (csrc/common/emulation.h), with
# ThreadSanitizer; then the emulation tests run against it. A race between two emulated GPU threads of one launch
# (a store without an atomic to an address another thread writes or reads) is a ThreadSanitizer report, and any
# report makes the run exit 66.
#
#   ./scripts/tsan.sh                          the emulation tests and the planted race (about 3 minutes here)
#   ./scripts/tsan.sh -q --junitxml=out.xml    pytest options, added to that selection
#   ./scripts/tsan.sh tests/test_emulation.py -k roi_align   test paths replace it
#
# Only segops._emulation is instrumented, built into build/tsan/ (the tree's own build stays as it is) and loaded by
# tests/conftest.py in place of the installed one (SEGOPS_EMULATION_LIBRARY). The CPU ops the tests compare with are
# the tree's regular build. Python and torch are not instrumented: libtsan is preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  SEGOPS_FORCE_CPU=1 source scripts/setup_env.sh
else
  source .venv/bin/activate
fi
mkdir -p build/tsan
echo "tsan: building the concurrent emulation with ThreadSanitizer (log: build/tsan/build.log) ..."
if ! CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1 SEGOPS_TSAN=1 \
     python setup.py build_ext --build-lib build/tsan/lib --build-temp build/tsan/temp > build/tsan/build.log 2>&1; then
  tail -n 30 build/tsan/build.log
  exit 1
fi
library=$(ls build/tsan/lib/segops/_emulation*.so)
export SEGOPS_EMULATION_LIBRARY="$PWD/$library" SEGOPS_REQUIRE_EMULATION=1
# The runtime of the compiler that built the library (torch's cpp_extension uses $CXX, else c++).
libtsan=$("${CXX:-c++}" -print-file-name=libtsan.so)
if [ ! -f "$libtsan" ]; then
  echo "tsan: ${CXX:-c++} has no ThreadSanitizer runtime (libtsan.so)" >&2
  exit 1
fi
export LD_PRELOAD="$libtsan"
# Reports do not stop the run; each process writes its own to build/tsan/reports/, printed at the end, and any
# report sets the exit status. Python's and torch's threads are not the kernels' (report_thread_leaks=0). ATen runs
# on one thread: libgomp is not instrumented, so ThreadSanitizer cannot see its barriers and would report the
# memset/memcpy of ATen's own parallel loops; the only threads left are the emulated launches'.
reports=build/tsan/reports
rm -rf "$reports" && mkdir -p "$reports"
export TSAN_OPTIONS="halt_on_error=0:exitcode=66:report_thread_leaks=0:second_deadlock_stack=1:log_path=$PWD/$reports/tsan"
export OMP_NUM_THREADS=1
selection=(tests/test_emulation.py tests/test_ps_roi.py tests/test_threadsanitizer.py tests/test_layouts.py
           tests/test_fuzz.py -k "emulat or threadsanitizer")
for argument in "$@"; do
  if [[ "$argument" == tests/* ]]; then selection=(); fi
done
status=0
python -m pytest -p no:cacheprovider "${selection[@]}" "$@" || status=$?
if compgen -G "$reports/tsan.*" > /dev/null; then
  cat "$reports"/tsan.*
  echo "tsan: ThreadSanitizer reported the races above ($reports/)" >&2
  exit 66
fi
exit "$status"
