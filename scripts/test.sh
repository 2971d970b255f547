#!/usr/bin/env bash
# The test command. Two tiers:
#   ./scripts/test.sh          every op, model and emulated kernel on the build bench.sh also uses (CPU kernels, plus
#                              the CUDA kernels where a GPU is visible, plus the test-only kernel emulation): minutes
#   ./scripts/test.sh --full   builds every .cu file too, even without a GPU (FORCE_CUDA=1, one architecture), and
#                              adds the tests marked slow: the CMake builds, PTX scans, the long searches. CI runs it.
# Both set up .venv and build segops into it (or reuse the build, tools/build_stamp.py). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
pytest_args=()
for argument in "$@"; do
  if [ "$argument" = "--full" ]; then full=1; else pytest_args+=("$argument"); fi
done
if [ "$full" = "1" ]; then
  if [ -z "${SEGOPS_FORCE_CPU:-}" ] && { command -v nvcc > /dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ]; }; then
    export FORCE_CUDA="${FORCE_CUDA:-1}"
    if ! nvidia-smi > /dev/null 2>&1; then
      # One architecture compile-checks every kernel; +PTX embeds its PTX, which tests/test_build.py reads.
      export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0+PTX}"
    fi
  fi
  if [ "${FORCE_CUDA:-}" = "1" ]; then
    export SEGOPS_EXPECT_CUDA_BUILD=1  # tests/test_build.py checks the CUDA kernels really were compiled, and their PTX
  fi
  export SEGOPS_TEST_TIER=full
else
  export SEGOPS_TEST_TIER=quick
  pytest_args=(-m "not slow" "${pytest_args[@]}")
fi
export SEGOPS_BUILD_EMULATION=1 SEGOPS_REQUIRE_EMULATION=1 SEGOPS_REQUIRE_DOCS=1
source scripts/setup_env.sh
python -m pytest "${pytest_args[@]}"
