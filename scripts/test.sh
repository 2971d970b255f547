#!/usr/bin/env bash
# The test command: set up .venv, build segops with its CUDA kernels wherever nvcc exists (FORCE_CUDA=1, so every
# .cu file compiles even without a GPU) plus the test-only kernel emulation, then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SEGOPS_FORCE_CPU:-}" ] && { command -v nvcc > /dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ]; }; then
  export FORCE_CUDA="${FORCE_CUDA:-1}"
  if ! nvidia-smi > /dev/null 2>&1; then
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # one architecture compile-checks every kernel
  fi
fi
if [ "${FORCE_CUDA:-}" = "1" ]; then
  export SEGOPS_EXPECT_CUDA_BUILD=1  # tests/test_build.py checks the CUDA kernels really were compiled
  export SEGOPS_KEEP_PTX=1           # ... and reads their PTX (no float64 instructions in float kernels)
fi
export SEGOPS_BUILD_EMULATION=1 SEGOPS_REQUIRE_EMULATION=1
source scripts/setup_env.sh
python -m pytest "$@"
