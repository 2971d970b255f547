#!/usr/bin/env bash
# The main job: set up .venv, build segops (CUDA kernels only if a GPU is visible), and run the benchmarks
# against torchvision: a table on stdout, JSON/Markdown/PNG in benchmarks/results/. Extra arguments go to
# `python -m benchmarks` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# The dense CRF's comparison (pydensecrf) and photograph (scikit-image): only the benchmarks need them.
python -m pip install --quiet -r requirements-bench.txt
python -m benchmarks "$@"
