"""RoIPool against RoIAlign for mask prediction, Mask R-CNN's RoIAlign ablation (He et al. 2017, table 2c) at toy
scale: one small network (a stride-16 convolutional body and a mask head) trained from scratch three times on
synthetic shapes, pooling its box features with segops.roi_pool, segops.roi_align(aligned=False) and
segops.roi_align(aligned=True), reporting the mask IoU of each on held-out images.

    python examples/roi_ablation.py [--steps 300] [--seed 0]

Each image holds one shape (disc, rectangle or triangle: segops.data's shapes) at a random sub-pixel position and
size; its box is the shape's exact extent. The mask target is the image-space mask resampled into the box's 14x14
grid (bin centres, aligned), so a pooling that misplaces features by a fraction of a stride-16 cell costs accuracy,
as on COCO. Prints a table; CPU, about 50 seconds per variant here.
"""

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import segops
from segops.data import CLASS_COLOURS, shape_mask

STRIDE = 16
MASK_SIZE = 14
IMAGE_SIZE = 128

VARIANTS = {
    "RoIPool": lambda f, b: segops.roi_pool(f, b, 7, 1 / STRIDE),
    "RoIAlign (aligned=False)": lambda f, b: segops.roi_align(f, b, 7, 1 / STRIDE, 2, aligned=False),
    "RoIAlign (aligned=True)": lambda f, b: segops.roi_align(f, b, 7, 1 / STRIDE, 2, aligned=True),
}


def make_batch(count, generator, supersample=4):
    """Images [count, 3, 128, 128], boxes [count, 5] (exact extents of the shapes) and 14x14 mask targets [count, 1,
    14, 14] in [0, 1], the coverage of each target bin by the shape (measured on a 4x supersampled mask)."""
    size = IMAGE_SIZE * supersample
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    ys, xs = ys / supersample, xs / supersample
    images, boxes, masks = [], [], []
    for index in range(count):
        label = int(torch.randint(1, 4, (), generator=generator))
        radius = 12 + 28 * torch.rand((), generator=generator)
        centre = radius + (IMAGE_SIZE - 2 * radius) * torch.rand(2, generator=generator)
        angle = 2 * math.pi * torch.rand((), generator=generator)
        fine = shape_mask(label, xs - centre[0], ys - centre[1], radius, angle).float()
        rows, cols = torch.nonzero(fine, as_tuple=True)
        box = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32) / supersample
        coverage = F.avg_pool2d(fine[None, None], supersample)[0]  # the shape's share of each image pixel
        background = 0.5 + 0.1 * torch.randn(3, 1, 1, generator=generator)
        colour = torch.tensor(CLASS_COLOURS[label - 1]).view(3, 1, 1)
        image = background * (1 - coverage) + colour * coverage
        images.append(image + 0.05 * torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator))
        boxes.append(torch.cat([torch.tensor([float(index)]), box]))
        roi = torch.cat([torch.zeros(1), box * supersample])[None]
        masks.append(segops.roi_align(fine[None, None], roi, MASK_SIZE, 1.0, 4, aligned=True)[0])
    return torch.stack(images), torch.stack(boxes), torch.stack(masks)


class MaskNet(nn.Module):
    """A stride-16 body (four stride-2 convolutions and a 3x3) and a mask head (RoI features 7x7 -> two 3x3
    convolutions -> 2x up-convolution -> 14x14 logits), the pooling being the variant under test."""

    def __init__(self, pool, width=64):
        super().__init__()
        self.pool = pool
        layers, channels = [], 3
        for _ in range(4):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers, nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width, 2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, images, boxes):
        return self.head(self.pool(self.body(images), boxes))


def mask_iou(logits, targets):
    """IoU of the predicted masks (logits > 0) with the targets (coverage > 0.5), pooled over all boxes."""
    predicted, truth = logits > 0, targets > 0.5
    return ((predicted & truth).sum() / (predicted | truth).sum()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    test = make_batch(args.test_images, torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for name, pool in VARIANTS.items():
        torch.manual_seed(args.seed)  # the same initial weights and data order for every variant
        model = MaskNet(pool)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(args.seed)
        started = time.perf_counter()
        for step in range(args.steps):
            images, boxes, masks = make_batch(args.batch_size, data)
            loss = F.binary_cross_entropy_with_logits(model(images, boxes), masks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            print(f"\r  {name:26s} step {step + 1}/{args.steps} loss {loss.item():.3f}", end="", file=sys.stderr)
        print(file=sys.stderr)
        with torch.no_grad():
            iou = mask_iou(model.eval()(test[0], test[1]), test[2])
        rows.append((name, iou, time.perf_counter() - started))
    print("| pooling | mask IoU (%) | train (s) |\n|---|---:|---:|")
    for name, iou, seconds in rows:
        print(f"| {name} | {100 * iou:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
