#!/usr/bin/env bash
# The main job: set up .venv, build segops (CUDA kernels only if a GPU is visible) or reuse the build test.sh made,
# and benchmark it against what users would otherwise call: a representative table (one case per op, a model) in a
# few minutes; `--full` runs every case. Writes JSON/Markdown/PNG to benchmarks/results/ (quick/ for the default
# run). Extra arguments go to `python -m benchmarks` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
# Built with the kernel emulation too, so that ./scripts/test.sh reuses this build instead of compiling again.
export SEGOPS_BUILD_EMULATION=1
source scripts/setup_env.sh
# The dense CRF's comparison (pydensecrf) and photograph (scikit-image): only the benchmarks need them.
echo "installing requirements-bench.txt (pydensecrf2 compiles from source the first time) ..."
python -m pip install --quiet -r requirements-bench.txt
python -m benchmarks "$@"
