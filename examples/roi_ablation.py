"""RoIPool against RoIAlign, Mask R-CNN's RoIAlign ablations (He et al. 2017) at toy scale: one small network (a
convolutional body and a task head) trained from scratch three times on synthetic shapes, the same initial weights and
data each time, pooling its box features with segops.roi_pool, segops.roi_align(aligned=False) and
segops.roi_align(aligned=True).

    python examples/roi_ablation.py [--task masks|keypoints] [--steps N] [--seed 0]

--task masks (table 2c; 300 steps by default): each image holds one shape (disc, rectangle or triangle: segops.data's
shapes) at a random sub-pixel position and size; its box is the shape's exact extent. The mask target is the
image-space mask resampled into the box's 14x14 grid (bin centres, aligned), so a pooling that misplaces features by
a fraction of a stride-16 cell costs accuracy, as on COCO. Reports the mask IoU; about 50 seconds per variant here.

--task keypoints (table 6; 300 steps by default): each image holds one five-sided "house" (apex, right eave, right
base, left base, left eave; tilted by up to 30 degrees, stretched and jittered, so every vertex sits at a sub-pixel
position), its K = 5 keypoints its vertices, its box the vertices' extent. The body has stride 8; the head is Mask
R-CNN's keypoint head shrunk: 14x14 RoI features, four 3x3 convolutions, a 4x4 stride-2 up-convolution to 28x28 and a
bilinear 2x upsampling to 56x56 logits per keypoint, trained with a softmax cross-entropy over the 56x56 heatmap
against the keypoint's discretised bin. Reports, on held-out images, COCO's OKS-based AP (k = KEYPOINT_K for every
vertex) and PCK (the share of keypoints within 0.05 and 0.1 of the box diagonal); about 45 seconds per variant here.

Prints a table (CPU) and returns its rows from main().
"""

import argparse
import math
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops
from segops.data import CLASS_COLOURS, shape_mask

STRIDE = 16  # the mask network's
KEYPOINT_STRIDE = 8  # the keypoint network's (at 16 it needs over 300 steps to localise anything: see the docs)
IMAGE_SIZE = 128
SUPERSAMPLE = 4  # shapes are drawn on a 4x finer grid and averaged: each pixel holds the shape's coverage
MASK_SIZE = 14
KEYPOINT_POOL = 14  # Mask R-CNN's keypoint head pools 14x14 (and predicts 56x56 heatmaps)

# The template house in units of its size (x right, y down): apex, right eave, right base, left base, left eave.
HOUSE = ((0.0, -1.0), (0.8, -0.25), (0.65, 0.9), (-0.65, 0.9), (-0.8, -0.25))
# OKS's per-keypoint constant k = 2 sigma (COCO's sigmas run from 0.025, the eyes, to 0.107, the hips): 0.1 for every
# vertex, so a vertex 0.1 s away (s^2 the shape's area) scores exp(-1/2).
KEYPOINT_K = 0.1
OKS_THRESHOLDS = torch.linspace(0.5, 0.95, 10, dtype=torch.float64)  # COCO's .50:.05:.95
RECALL_LEVELS = torch.linspace(0, 1, 101, dtype=torch.float64)  # COCO's 101-point interpolated precision


def pooling_variants(output_size: int, stride: int) -> Dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """The three poolings under test, from a map of the given stride to output_size x output_size."""
    return {
        "RoIPool": lambda f, b: segops.roi_pool(f, b, output_size, 1 / stride),
        "RoIAlign (aligned=False)": lambda f, b: segops.roi_align(f, b, output_size, 1 / stride, 2, aligned=False),
        "RoIAlign (aligned=True)": lambda f, b: segops.roi_align(f, b, output_size, 1 / stride, 2, aligned=True),
    }


VARIANTS = pooling_variants(7, STRIDE)  # the mask task's


def fine_grid() -> Tuple[Tensor, Tensor]:
    """The x and y image coordinates of the supersampled pixel centres, each [S, S] with S = 4 * 128."""
    size = IMAGE_SIZE * SUPERSAMPLE
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return xs / SUPERSAMPLE, ys / SUPERSAMPLE


def random_shape(generator: torch.Generator, smallest: float, spread: float) -> Tuple[int, Tensor, Tensor, Tensor]:
    """A class (1..3), a size in [smallest, smallest + spread), a centre that keeps a disc of that radius inside the
    image, and an angle in [0, 2 pi)."""
    label = int(torch.randint(1, 4, (), generator=generator))
    radius = smallest + spread * torch.rand((), generator=generator)
    centre = radius + (IMAGE_SIZE - 2 * radius) * torch.rand(2, generator=generator)
    angle = 2 * math.pi * torch.rand((), generator=generator)
    return label, radius, centre, angle


def render(fine: Tensor, label: int, generator: torch.Generator) -> Tensor:
    """The image [3, 128, 128] of a supersampled shape mask [S, S]: its class colour over a random grey, weighted by
    the shape's coverage of each pixel, plus pixel noise."""
    coverage = F.avg_pool2d(fine[None, None].float(), SUPERSAMPLE)[0]
    background = 0.5 + 0.1 * torch.randn(3, 1, 1, generator=generator)
    colour = torch.tensor(CLASS_COLOURS[label - 1]).view(3, 1, 1)
    image = background * (1 - coverage) + colour * coverage
    return image + 0.05 * torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def make_batch(count: int, generator: torch.Generator) -> Tuple[Tensor, Tensor, Tensor]:
    """Images [count, 3, 128, 128], boxes [count, 5] (exact extents of the shapes) and 14x14 mask targets [count, 1,
    14, 14] in [0, 1], the coverage of each target bin by the shape (measured on a 4x supersampled mask)."""
    xs, ys = fine_grid()
    images, boxes, masks = [], [], []
    for index in range(count):
        label, radius, centre, angle = random_shape(generator, 12, 28)
        fine = shape_mask(label, xs - centre[0], ys - centre[1], radius, angle).float()
        rows, cols = torch.nonzero(fine, as_tuple=True)
        box = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32) / SUPERSAMPLE
        images.append(render(fine, label, generator))
        boxes.append(torch.cat([torch.tensor([float(index)]), box]))
        roi = torch.cat([torch.zeros(1), box * SUPERSAMPLE])[None]
        masks.append(segops.roi_align(fine[None, None], roi, MASK_SIZE, 1.0, 4, aligned=True)[0])
    return torch.stack(images), torch.stack(boxes), torch.stack(masks)


def polygon_mask(vertices: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """The points (xs, ys) inside the polygon vertices [V, 2] (even-odd rule: a ray to the right crosses an odd number
    of edges; all edges at once)."""
    x0, y0 = vertices[:, :, None, None].unbind(1)  # each [V, 1, 1]: edge i runs from vertex i - 1 to vertex i
    x1, y1 = vertices.roll(1, 0)[:, :, None, None].unbind(1)
    crosses = ((y0 > ys) != (y1 > ys)) & (xs < x0 + (x1 - x0) * (ys - y0) / (y1 - y0))  # never where y0 == y1
    return crosses.sum(0) % 2 == 1


def polygon_area(vertices: Tensor) -> Tensor:
    """The area of a simple polygon vertices [V, 2] (the shoelace formula)."""
    x, y = vertices.unbind(1)
    return 0.5 * (x * y.roll(-1) - x.roll(-1) * y).sum().abs()


def make_keypoint_batch(count: int, generator: torch.Generator) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images [count, 3, 128, 128] of one house each, boxes [count, 5] (the vertices' extent), keypoints [count, 5, 2]
    (the vertices, x and y in image pixels, at sub-pixel positions) and the houses' areas [count]."""
    xs, ys = fine_grid()
    template = torch.tensor(HOUSE)
    images, boxes, keypoints, areas = [], [], [], []
    for index in range(count):
        label, radius, centre, angle = random_shape(generator, 12, 20)
        tilt = (angle - math.pi) / 6  # up to 30 degrees either way
        stretch = 0.75 + 0.5 * torch.rand(2, generator=generator)
        jitter = 0.08 * (2 * torch.rand(len(HOUSE), 2, generator=generator) - 1)
        rotation = torch.stack([torch.cos(tilt), -torch.sin(tilt), torch.sin(tilt), torch.cos(tilt)]).view(2, 2)
        vertices = centre + radius * ((template + jitter) * stretch) @ rotation.T
        box = torch.cat([vertices.min(0).values, vertices.max(0).values])
        shift = (0.5 - box[:2]).clamp(min=0) - (box[2:] - IMAGE_SIZE + 0.5).clamp(min=0)  # moved inside the image
        vertices, box = vertices + shift, box + shift.repeat(2)
        first, last = (box[:2] * SUPERSAMPLE).long(), (box[2:] * SUPERSAMPLE).long()
        window = slice(first[1], last[1] + 1), slice(first[0], last[0] + 1)  # the fine pixels the house can cover
        fine = torch.zeros(xs.shape, dtype=torch.bool)
        fine[window] = polygon_mask(vertices, xs[window], ys[window])
        images.append(render(fine, label, generator))
        boxes.append(torch.cat([torch.tensor([float(index)]), box]))
        keypoints.append(vertices)
        areas.append(polygon_area(vertices))
    return torch.stack(images), torch.stack(boxes), torch.stack(keypoints), torch.stack(areas)


def conv_body(width: int, stride: int) -> nn.Sequential:
    """The body: log2(stride) stride-2 3x3 convolutions (four for stride 16) and a 3x3 convolution, each followed by a
    ReLU."""
    layers, channels = [], 3
    for _ in range(stride.bit_length() - 1):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))


def conv_stack(width: int, count: int) -> List[nn.Module]:
    """count 3x3 convolutions of width channels, each followed by a ReLU."""
    layers = []
    for _ in range(count):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
    return layers


class RoINet(nn.Module):
    """The body, the pooling under test and a head (built by the subclass, after the body): images [N, 3, 128, 128],
    boxes [K, 5] -> the head's output."""

    def __init__(self, pool, width: int, stride: int):
        super().__init__()
        self.pool = pool
        self.body = conv_body(width, stride)

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        return self.head(self.pool(self.body(images), boxes))


class MaskNet(RoINet):
    """The mask network: a stride-16 body, RoI features 7x7 -> two 3x3 convolutions -> 2x up-convolution -> 14x14
    logits."""

    def __init__(self, pool, width: int = 64):
        super().__init__(pool, width, STRIDE)
        self.head = nn.Sequential(
            *conv_stack(width, 2),
            nn.ConvTranspose2d(width, width, 2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )


class KeypointNet(RoINet):
    """The keypoint network: a stride-8 body and Mask R-CNN's keypoint head shrunk (8 convolutions of 512 there): RoI
    features 14x14 -> four 3x3 convolutions -> a 4x4 stride-2 up-convolution to one 28x28 map per keypoint ->
    bilinear 2x upsampling -> heatmap logits [K, num_keypoints, 56, 56]."""

    def __init__(self, pool, num_keypoints: int = len(HOUSE), width: int = 64):
        super().__init__(pool, width, KEYPOINT_STRIDE)
        self.head = nn.Sequential(
            *conv_stack(width, 4),
            nn.ConvTranspose2d(width, num_keypoints, 4, stride=2, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )


def mask_iou(logits: Tensor, targets: Tensor) -> float:
    """IoU of the predicted masks (logits > 0) with the targets (coverage > 0.5), pooled over all boxes."""
    predicted, truth = logits > 0, targets > 0.5
    return ((predicted & truth).sum() / (predicted | truth).sum()).item()


def keypoint_bins(keypoints: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Mask R-CNN's keypoint targets (torchvision's keypoints_to_heatmap): each keypoint [K, P, 2]'s bin of its box
    [K, 5]'s size x size grid, floor((x - x1) * size / (x2 - x1)) clamped to the grid, as a flat index row * size +
    column [K, P]."""
    corner, extent = boxes[:, None, 1:3], boxes[:, None, 3:5] - boxes[:, None, 1:3]
    cells = ((keypoints - corner) * size / extent).floor().long().clamp(0, size - 1)
    return cells[..., 1] * size + cells[..., 0]


def keypoint_loss(heatmaps: Tensor, boxes: Tensor, keypoints: Tensor) -> Tensor:
    """Mask R-CNN's keypoint loss: the softmax cross-entropy of each heatmap [K, P, M, M] (over its M x M bins)
    against the keypoint's bin, averaged over keypoints."""
    targets = keypoint_bins(keypoints, boxes, heatmaps.shape[-1])
    return F.cross_entropy(heatmaps.flatten(2).flatten(0, 1), targets.flatten())


def decode_keypoints(heatmaps: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """Keypoints [K, P, 2] at the centres of the heatmaps' [K, P, M, M] most likely bins, in image coordinates, and
    scores [K], each box's mean over keypoints of the peak's softmax probability."""
    size = heatmaps.shape[-1]
    probabilities = heatmaps.flatten(2).softmax(-1)
    peak, index = probabilities.max(-1)
    cells = torch.stack([index % size, index // size], -1).to(boxes.dtype) + 0.5
    corner, extent = boxes[:, None, 1:3], boxes[:, None, 3:5] - boxes[:, None, 1:3]
    return corner + cells * extent / size, peak.mean(-1)


def pck(predicted: Tensor, truth: Tensor, boxes: Tensor, alpha: float) -> float:
    """The percentage of correct keypoints: the share of keypoints predicted [K, P, 2] within alpha times their box
    [K, 5]'s diagonal of the truth [K, P, 2]."""
    diagonal = (boxes[:, 3:5] - boxes[:, 1:3]).norm(dim=-1)
    return ((predicted - truth).norm(dim=-1) <= alpha * diagonal[:, None]).double().mean().item()


def oks(predicted: Tensor, truth: Tensor, areas: Tensor, k: float = KEYPOINT_K) -> Tensor:
    """COCO's object keypoint similarity of each object [K]: the mean over its keypoints [K, P, 2] of exp(-d^2 / (2
    s^2 k^2)), d the distance from the truth, s^2 the object's area [K] and k the per-keypoint constant (COCO's 2
    sigma; a float for all keypoints, or a Tensor[P])."""
    distances = (predicted - truth).double().square().sum(-1)
    k = torch.as_tensor(k, dtype=torch.float64)
    return torch.exp(-distances / (2 * areas.double()[:, None] * k.square())).mean(-1)


def oks_ap(similarities: Tensor, scores: Tensor, thresholds: Tensor = OKS_THRESHOLDS) -> Tensor:
    """COCO's keypoint AP for one prediction per ground-truth object (here each box is a ground-truth box, so COCO's
    matching pairs them): per threshold t, the predictions ranked by scores [K] are true positives where their
    OKS [K] >= t; the precision, made non-increasing from the right, is read at 101 recall levels (0 beyond the
    highest recall reached) and averaged. Returns the AP per threshold [T] (AP^kp is its mean; AP^kp_50 and
    AP^kp_75 its entries at .50 and .75)."""
    order = scores.argsort(descending=True, stable=True)
    ranked = similarities[order].double()
    count = torch.arange(1, len(ranked) + 1, dtype=torch.float64)
    precisions = []
    for threshold in thresholds.tolist():
        true_positives = (ranked >= threshold).double().cumsum(0)
        recall, precision = true_positives / len(ranked), true_positives / count
        precision = precision.flip(0).cummax(0).values.flip(0)
        index = torch.searchsorted(recall, RECALL_LEVELS, side="left")
        sampled = torch.where(index < len(ranked), precision[index.clamp(max=len(ranked) - 1)], 0.0)
        precisions.append(sampled.mean())
    return torch.stack(precisions)


def keypoint_metrics(heatmaps: Tensor, boxes: Tensor, keypoints: Tensor, areas: Tensor) -> Dict[str, float]:
    """AP^kp, AP^kp_50, AP^kp_75 (OKS, COCO's rules) and PCK at 0.05 and 0.1 of the box diagonal, all in [0, 1]."""
    predicted, scores = decode_keypoints(heatmaps, boxes)
    ap = oks_ap(oks(predicted, keypoints, areas), scores)
    return {
        "AP^kp": ap.mean().item(),
        "AP^kp_50": ap[0].item(),
        "AP^kp_75": ap[5].item(),
        "PCK@0.05": pck(predicted, keypoints, boxes, 0.05),
        "PCK@0.1": pck(predicted, keypoints, boxes, 0.1),
    }


class Task(NamedTuple):
    """What the two ablations differ in: the data, the network, the loss and the metrics, each of a batch (images,
    boxes, *targets)."""

    steps: int
    make_batch: Callable[..., Tuple[Tensor, ...]]
    build: Callable[[Callable], nn.Module]
    loss: Callable[..., Tensor]
    metrics: Callable[..., Dict[str, float]]
    variants: Dict[str, Callable[[Tensor, Tensor], Tensor]]


TASKS = {
    "masks": Task(
        300,
        make_batch,
        MaskNet,
        lambda logits, boxes, masks: F.binary_cross_entropy_with_logits(logits, masks),
        lambda logits, boxes, masks: {"mask IoU": mask_iou(logits, masks)},
        VARIANTS,
    ),
    "keypoints": Task(
        300,
        make_keypoint_batch,
        KeypointNet,
        lambda heatmaps, boxes, keypoints, areas: keypoint_loss(heatmaps, boxes, keypoints),
        keypoint_metrics,
        pooling_variants(KEYPOINT_POOL, KEYPOINT_STRIDE),
    ),
}


def train(task: Task, name: str, pool, steps: int, batch_size: int, seed: int) -> nn.Module:
    """One variant: the task's network on `pool`, trained from the same initial weights and data for every variant."""
    torch.manual_seed(seed)
    model = task.build(pool)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(seed)
    for step in range(steps):
        images, boxes, *targets = task.make_batch(batch_size, data)
        loss = task.loss(model(images, boxes), boxes, *targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        print(f"\r  {name:26s} step {step + 1}/{steps} loss {loss.item():.3f}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return model


def main(argv=None) -> List[Tuple[str, Dict[str, float], float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="masks")
    parser.add_argument("--steps", type=int, default=None, help="training steps (masks 300, keypoints 300)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    steps = task.steps if args.steps is None else args.steps
    test = task.make_batch(args.test_images, torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for name, pool in task.variants.items():
        started = time.perf_counter()
        model = train(task, name, pool, steps, args.batch_size, args.seed)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            metrics = task.metrics(model.eval()(test[0], test[1]), *test[1:])
        rows.append((name, metrics, seconds))
    columns = list(rows[0][1])
    print("| pooling | " + " | ".join(f"{c} (%)" for c in columns) + " | train (s) |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for name, metrics, seconds in rows:
        print(f"| {name} | " + " | ".join(f"{100 * metrics[c]:.1f}" for c in columns) + f" | {seconds:.0f} |")
    return rows


if __name__ == "__main__":
    main()
