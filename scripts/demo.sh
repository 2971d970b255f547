#!/usr/bin/env bash
# The demo: set up .venv and build segops (as test.sh and bench.sh do), then, on the CPU:
#   segmentation  examples/train_segmentation.py: FCN-8s, SegNet, DeconvNet, U-Net and DeepLab v2 (+ dense CRF) on
#                 synthetic shapes, metrics against the majority class, demo_output/predictions.png;
#   saliency      examples/train_saliency.py: BASNet, PoolNet and DCL (+ dense CRF) on synthetic salient objects,
#                 MAE / max F / S-measure against a location prior, demo_output/saliency.png;
#   roi_ablation  examples/roi_ablation.py: a mask head trained on RoIPool, RoIAlign and aligned RoIAlign features;
#   folder        examples/train_folder.py: a flood-style folder of photos written to disk (metadata.csv, Image/,
#                 Mask/), FCN-8s and U-Net trained on it through `python -m segops.train` (FCN-8s also from a
#                 local VGG16 file given --vgg16 PATH), the metric table and demo_output/folder/loss_curves.png;
#   keypoints     examples/roi_ablation.py --task keypoints: the same ablation for a keypoint head (OKS AP, PCK).
# ./scripts/demo.sh runs all five; ./scripts/demo.sh PART [ARGS...] runs one, ARGS going to its script (--help).
# DEMO_PROCESSES=2 runs the segmentation part data-parallel under torchrun (gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A scripts=([segmentation]=examples/train_segmentation.py [saliency]=examples/train_saliency.py
                    [roi_ablation]=examples/roi_ablation.py [folder]=examples/train_folder.py
                    [keypoints]=examples/roi_ablation.py)
declare -A options=([keypoints]="--task keypoints")  # a part's own arguments, before the caller's
parts=(segmentation saliency roi_ablation folder keypoints)
if [ $# -gt 0 ]; then
  if [ -z "${scripts[$1]+set}" ]; then
    echo "usage: $0 [segmentation|saliency|roi_ablation|folder|keypoints [ARGS...]], got '$1'" >&2
    exit 2
  fi
  parts=("$1")
  shift
fi
source scripts/setup_env.sh
for part in "${parts[@]}"; do
  echo "== $part ==" >&2
  if [ "$part" = segmentation ] && [ "${DEMO_PROCESSES:-1}" -gt 1 ]; then
    torchrun --standalone --nproc_per_node="$DEMO_PROCESSES" "${scripts[$part]}" "$@"
  else
    # shellcheck disable=SC2086  # word-split on purpose: "--task keypoints" is two arguments
    python "${scripts[$part]}" ${options[$part]:-} "$@"
  fi
done
