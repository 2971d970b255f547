#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, in one command:
#   1. builds segops with its CUDA kernels for this GPU's architecture only (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST from
#      the device; set TORCH_CUDA_ARCH_LIST to choose), through scripts/setup_env.sh as test.sh and bench.sh do
#      (a build made from the same sources with the same settings is reused);
#   2. runs every test that needs a CUDA device: the tests marked `cuda` (pyproject.toml), which a machine without a
#      GPU skips; one of them skipped here fails the check;
#   3. runs the GPU benchmark table, `python -m benchmarks.gpu` (extra arguments go to it; --help), which writes
#      benchmarks/results/gpu/latest.json and latest.md.
# Under 10 minutes on one H100, most of it the build. Without a GPU it says so and exits 1 before building anything.
# Exits non-zero when the tests or the benchmark (outputs disagreeing, segops refusing the deterministic mode) fail.
set -euo pipefail
cd "$(dirname "$0")/.."

no_gpu() {
  echo "gpu_check: $1. This check needs an NVIDIA GPU; nothing was built, tested or measured." >&2
  exit 1
}

command -v nvidia-smi > /dev/null 2>&1 || no_gpu "no GPU: nvidia-smi is not on PATH (no NVIDIA driver)"
gpu_list=$(nvidia-smi -L 2> /dev/null) || no_gpu "no GPU: nvidia-smi fails ($(nvidia-smi -L 2>&1 | head -n 1))"
[ -n "$gpu_list" ] || no_gpu "no GPU: nvidia-smi lists none"

# torch's view of the device (it follows CUDA_VISIBLE_DEVICES), where torch is installed already: .venv's, or else the
# interpreter setup_env.sh would create .venv with. Exit 3: no torch yet (setup_env.sh installs it, and the check
# after the setup below asks again); 4: torch sees no GPU.
python_bin=.venv/bin/python
[ -x "$python_bin" ] || python_bin="${PYTHON:-python3}"
probe='
import sys
try:
    import torch
except ImportError:
    sys.exit(3)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    sys.exit(4)
print("%d.%d" % torch.cuda.get_device_capability())
'
probe_status=0
torch_view=$("$python_bin" -c "$probe" 2> /dev/null) || probe_status=$?
if [ "$probe_status" = "4" ]; then
  no_gpu "no GPU for torch: nvidia-smi lists one, but torch.cuda.is_available() is False for $torch_view"
fi
capability=""
if [ "$probe_status" = "0" ]; then
  capability="$torch_view"
else
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -n 1 | tr -d '[:space:]') \
    || capability=""
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  [ -n "$capability" ] || {
    echo "gpu_check: cannot tell the GPU's compute capability (nvidia-smi too old?): set TORCH_CUDA_ARCH_LIST" >&2
    exit 1
  }
  export TORCH_CUDA_ARCH_LIST="$capability"
fi
export FORCE_CUDA=1
# The kernel emulation too, as test.sh and bench.sh build: this build then serves them as well, and no emulation
# module of an older build is left beside it.
export SEGOPS_BUILD_EMULATION=1
echo "gpu_check: $(echo "$gpu_list" | head -n 1)"
echo "gpu_check: building segops with CUDA kernels for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST ..."
start=$SECONDS
source scripts/setup_env.sh
built=$SECONDS

python - <<'EOF'
import sys

import torch

import segops

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: nothing tested")
if segops.cuda_version() is None:
    sys.exit("gpu_check: segops was built without its CUDA kernels (build/pip-install.log): nothing tested")
print(f"gpu_check: segops {segops.__version__}, CUDA {segops.cuda_version()}, on {torch.cuda.get_device_name()}")
EOF

echo "gpu_check: the CUDA tests (pytest -m cuda) ..."
junit=build/gpu_check_tests.xml
tests_status=0
python -m pytest -m cuda -q --junitxml="$junit" || tests_status=$?
skipped=$(python - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ElementTree

cases = ElementTree.parse(sys.argv[1]).getroot().iter("testcase")
print("\n".join(f"{case.get('classname')}::{case.get('name')}" for case in cases if case.find("skipped") is not None))
EOF
) || skipped="(no test report: $junit)"
if [ -n "$skipped" ]; then
  echo "gpu_check: CUDA tests skipped on a machine with a GPU (each should run here):" >&2
  echo "$skipped" >&2
  [ "$tests_status" != "0" ] || tests_status=1
fi
tested=$SECONDS

echo "gpu_check: the GPU benchmark table (python -m benchmarks.gpu) ..."
bench_status=0
python -m benchmarks.gpu "$@" || bench_status=$?
finished=$SECONDS

echo "gpu_check: build $((built - start)) s, tests $((tested - built)) s (status $tests_status)," \
  "benchmark $((finished - tested)) s (status $bench_status); results in benchmarks/results/gpu/"
if [ "$tests_status" != "0" ] || [ "$bench_status" != "0" ]; then
  exit 1
fi
