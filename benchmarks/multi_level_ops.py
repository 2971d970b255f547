"""Multi-level RoIAlign cases: segops.multi_scale_roi_align against torchvision's MultiScaleRoIAlign ("assign", the
FPN rule) and against torchvision.ops.roi_align once per map ("all", PANet's pooling), on a 4-level FPN of 800x1216
images. Forward+backward cases compare the gradients of every map."""

import torch
import torchvision

import segops
from benchmarks.case import Case

IMAGE = (800, 1216)
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
CHANNELS = 256


def make_pyramid(batch, num_boxes, seed=0):
    """FPN maps [batch, 256, 800/s, 1216/s] for strides 4..32, and proposals whose sizes spread over every level
    (square roots of their areas log-uniform in 16..800 pixels), as Tensor[K, 5]."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, CHANNELS, int(IMAGE[0] * s), int(IMAGE[1] * s), generator=g) for s in SCALES]
    size = torch.exp(torch.empty(num_boxes, 1).uniform_(2.77, 6.68, generator=g))
    aspect = torch.exp(torch.empty(num_boxes, 1).uniform_(-0.7, 0.7, generator=g))
    extent = torch.cat([size * aspect, size / aspect], dim=1)
    top_left = torch.rand(num_boxes, 2, generator=g) * torch.tensor([IMAGE[1], IMAGE[0]])
    bottom_right = torch.minimum(top_left + extent, torch.tensor([IMAGE[1], IMAGE[0]], dtype=torch.float32))
    batch_index = torch.randint(0, batch, (num_boxes, 1), generator=g).float()
    return maps, torch.cat([batch_index, top_left, bottom_right], dim=1)


def _assign_ops(batch):
    reference = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)

    def theirs(maps, rois):
        boxes = [rois[rois[:, 0] == n, 1:] for n in range(batch)]
        order = torch.cat([torch.where(rois[:, 0] == n)[0] for n in range(batch)])
        pooled = reference(dict(zip("0123", maps)), boxes, [IMAGE] * batch)
        return pooled[torch.argsort(order)]  # back to the rows' order

    return lambda maps, rois: segops.multi_scale_roi_align(maps, rois, 7, SCALES, 2), theirs


def _all_ops():
    return (
        lambda maps, rois: segops.multi_scale_roi_align(maps, rois, 7, SCALES, 2, mode="all"),
        lambda maps, rois: torch.stack(
            [torchvision.ops.roi_align(m, rois, 7, s, 2) for m, s in zip(maps, SCALES)], dim=1
        ),
    )


def _gradients(fn, maps, rois, grad):
    inputs = [m.detach().requires_grad_() for m in maps]
    return torch.autograd.grad(fn(inputs, rois), inputs, grad)


def cases():
    result = []
    # (batch, boxes, mode, targets): the case (one image, 1000 proposals, at least 3x both ways), then fewer
    # boxes, two images, and PANet's every-box-every-map pooling.
    for batch, num_boxes, mode, targets in [
        (1, 1000, "assign", (3.0, 3.0)),
        (1, 100, "assign", (1.0, 1.0)),
        (2, 2000, "assign", (1.0, 1.0)),
        (1, 512, "all", (1.0, 1.0)),
    ]:
        maps, rois = make_pyramid(batch, num_boxes)
        ours, theirs = _assign_ops(batch) if mode == "assign" else _all_ops()
        reference = "torchvision MultiScaleRoIAlign" if mode == "assign" else "torchvision roi_align per map"
        label = f"multi_scale_roi_align {mode} 7x7, 4-level FPN of {batch}x800x1216, {num_boxes} boxes"
        grad = torch.randn_like(ours(maps, rois))
        result += [
            Case(
                f"{label} forward",
                targets[0],
                lambda o=ours, m=maps, r=rois: o(m, r),
                lambda t=theirs, m=maps, r=rois: t(m, r),
                reference=reference,
            ),
            Case(
                f"{label} forward+backward",
                targets[1],
                lambda o=ours, m=maps, r=rois, g=grad: _gradients(o, m, r, g),
                lambda t=theirs, m=maps, r=rois, g=grad: _gradients(t, m, r, g),
                reference=reference,
            ),
        ]
    return result
