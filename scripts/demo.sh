#!/usr/bin/env bash
# The demo: set up .venv and build segops (as test.sh and bench.sh do), then train FCN-8s, SegNet, DeconvNet, U-Net
# and DeepLab v2 on synthetic shapes for a few minutes on the CPU (examples/train_segmentation.py): a table of metrics
# against the majority-class baseline, DeepLab with and without the dense CRF, and demo_output/predictions.png.
# DEMO_PROCESSES=2 runs it data-parallel under torchrun (gloo). Extra arguments go to the script (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
if [ "${DEMO_PROCESSES:-1}" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$DEMO_PROCESSES" examples/train_segmentation.py "$@"
fi
exec python examples/train_segmentation.py "$@"
