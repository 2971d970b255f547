#!/usr/bin/env bash
# The sanitizer run: the CPU extension and the kernel emulation (the CUDA kernels compiled for the host) built with
# AddressSanitizer and UndefinedBehaviorSanitizer (float-cast-overflow included), then the test suite, fuzzer
# included, run under them. Every finding aborts with its report, so exit 0 means a clean run.
#
#   ./scripts/sanitize.sh                        the whole suite (fast fuzz profile)
#   ./scripts/sanitize.sh tests/test_fuzz.py     any pytest arguments instead
#   SEGOPS_FUZZ_PROFILE=long ./scripts/sanitize.sh tests/test_fuzz.py
#
# It builds in a copy of the work tree (build/sanitize/tree: tracked and untracked, not ignored, files) so that the
# regular build in the tree stays as it is (about 2 minutes here, then the tests). Python and torch are not
# instrumented: the runtimes are preloaded, and leak detection is off (the interpreter's own allocations would
# drown the report). Tests of resident memory skip themselves under SEGOPS_SANITIZED=1 (ASan's quarantine holds
# freed memory by design).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  SEGOPS_FORCE_CPU=1 source scripts/setup_env.sh
else
  source .venv/bin/activate
fi
tree=build/sanitize/tree
mkdir -p "$tree"
find "$tree" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard | xargs -0 cp -p --parents -t "$tree"
echo "sanitize: building the instrumented extension (log: $tree/build/sanitize-build.log) ..."
mkdir -p "$tree/build"
if ! (cd "$tree" && SEGOPS_SANITIZE=1 SEGOPS_FORCE_CPU=1 SEGOPS_BUILD_EMULATION=1 \
      python setup.py build_ext --inplace > build/sanitize-build.log 2>&1); then
  tail -n 30 "$tree/build/sanitize-build.log"
  exit 1
fi
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:check_initialization_order=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export SEGOPS_SANITIZED=1 SEGOPS_REQUIRE_EMULATION=1
cd "$tree"
# The instrumented modules, not the work tree's (which the editable install points at), must be the ones tested.
python - <<'EOF'
import os, segops, segops._emulation, segops._C
assert segops._C.__file__.startswith(os.getcwd()), segops._C.__file__
EOF
python -m pytest -p no:cacheprovider "${@:-tests}"
