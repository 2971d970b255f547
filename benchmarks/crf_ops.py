"""Dense CRF cases: segops.dense_crf against pydensecrf (pydensecrf2, CPU-only and single-threaded, the tool users run
today) with the same model, settings and inputs, in one process; a batch of 8 against 8 single images; and the
peak memory of a 2048x1024 image with 19 labels, in a child process. pydensecrf and scikit-image (the photograph) are
optional: `pip install -r requirements-bench.txt`; without them these cases are skipped."""

import json
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

import segops
from benchmarks.case import Case

# pydensecrf's documented defaults: addPairwiseGaussian(sxy=3, compat=3), addPairwiseBilateral(sxy=80, srgb=13,
# compat=10); segops.dense_crf's defaults are the same.
ITERATIONS = 5
MIN_LABEL_AGREEMENT = 0.995


def photograph(height=375, width=500):
    """scikit-image's coffee photograph (400x600 RGB), its top-left height x width, uint8 [H, W, 3]."""
    import skimage.data

    image = skimage.data.coffee()
    if height > image.shape[0] or width > image.shape[1]:  # larger sizes: the photograph tiled
        reps = (-(-height // image.shape[0]), -(-width // image.shape[1]), 1)
        image = np.tile(image, reps)
    return np.ascontiguousarray(image[:height, :width])


def logits(labels, height, width, seed=0):
    """A network's scores as a CRF gets them: smooth random logits (a coarse map upsampled) plus per-pixel noise,
    Tensor[1, L, H, W]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, labels, 8, 10, generator=g) * 3
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth + torch.randn(1, labels, height, width, generator=g)


def pydensecrf_inference(unary, image):
    """pydensecrf's 5 mean-field steps with its defaults: unary Tensor[1, L, H, W] (logits; pydensecrf's unary
    energy is their negative), image uint8 [H, W, 3]; returns Tensor[1, L, H, W]."""
    import pydensecrf.densecrf as dcrf

    _, labels, height, width = unary.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray((-unary[0]).reshape(labels, -1).numpy()))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return torch.from_numpy(np.array(crf.inference(ITERATIONS))).view(1, labels, height, width)


def label_agreement(actual, expected):
    """Passes where the arg-max labels agree on at least 99.5% of pixels (the issue's bar)."""
    agreement = (actual.argmax(1) == expected.argmax(1)).double().mean().item()
    return agreement >= MIN_LABEL_AGREEMENT, f"labels agree on {100 * agreement:.2f}% of pixels"


def bitwise(actual, expected):
    return torch.equal(actual, expected), "bitwise equal" if torch.equal(actual, expected) else "differ"


def _pydensecrf_case(height, width, labels, target):
    image = photograph(height, width)
    unary = logits(labels, height, width)
    image_t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    return Case(
        f"dense_crf {width}x{height} photo, {labels} labels, {ITERATIONS} steps incl. lattice build",
        target,
        lambda: segops.dense_crf(unary, image_t, ITERATIONS),
        lambda: pydensecrf_inference(unary, image),
        reference="pydensecrf",
        agreement=label_agreement,
    )


def _batch_case(batch, height, width, labels):
    image = torch.from_numpy(photograph(height, width)).permute(2, 0, 1)[None]
    images = torch.cat([image.roll(shifts=17 * b, dims=3) for b in range(batch)]).contiguous()
    unary = torch.cat([logits(labels, height, width, seed=b) for b in range(batch)])
    return Case(
        f"dense_crf batch of {batch} {width}x{height}, {labels} labels vs {batch} single images",
        1.0,
        lambda: segops.dense_crf(unary, images, ITERATIONS),
        lambda: torch.cat([segops.dense_crf(unary[b : b + 1], images[b : b + 1], ITERATIONS) for b in range(batch)]),
        reference=f"segops, {batch} calls",
        agreement=bitwise,
    )


def available():
    try:
        import pydensecrf.densecrf  # noqa: F401
        import skimage.data  # noqa: F401
    except ImportError as error:
        print(f"dense_crf cases skipped: {error} (pip install -r requirements-bench.txt)", file=sys.stderr)
        return False
    return True


def cases():
    if not available():
        return []
    return [
        # The CPU-limits issue's bars: 3x at PASCAL VOC's size and labels, 2x at the other sizes users meet (a small
        # image, few labels, a large image).
        _pydensecrf_case(375, 500, 21, 3.0),
        _pydensecrf_case(188, 250, 21, 2.0),
        _pydensecrf_case(375, 500, 2, 2.0),
        _pydensecrf_case(750, 1000, 21, 2.0),
        _batch_case(8, 375, 500, 21),
    ]


PEAK_MEMORY_SCRIPT = """
import json, torch, segops
from benchmarks.crf_ops import logits


def peak_gb():  # this process's high-water mark (ru_maxrss would include the parent's, from before the exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20

height, width, labels = 1024, 2048, 19
g = torch.Generator().manual_seed(0)
image = (torch.rand(1, 3, 64, 128, generator=g) * 255).to(torch.uint8)
image = torch.nn.functional.interpolate(image.float(), size=(height, width), mode="nearest").to(torch.uint8)
unary = logits(labels, height, width)
before = peak_gb()
out = segops.dense_crf(unary, image, 5)
print(json.dumps({"peak_gb": peak_gb(), "inputs_gb": before}))
"""


def peak_memory():
    """Peak resident memory of a child process running dense_crf on a 2048x1024 image, 19 labels, 5 steps (the
    issue's bar: under 4 GB), with the peak before the call (interpreter, torch, the inputs)."""
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])
