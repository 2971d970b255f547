"""RoIAlign / RoIPool cases: segops against torchvision.ops on the same inputs, in one process."""

import torch
import torchvision

import segops
from benchmarks.case import Case

# An FPN level-2 feature map of an 800x1216 image pair (stride 4) and random proposals on it.
BATCH, CHANNELS, HEIGHT, WIDTH = 2, 256, 200, 304
SPATIAL_SCALE = 0.25
NUM_BOXES = 512
# The sweep over box counts: from one box to a detector's full proposal set.
SWEEP_BOXES = (1, 16, 128, 512, 2048)


def make_inputs(seed=0, num_boxes=NUM_BOXES, batch=BATCH):
    """input Tensor[batch, 256, 200, 304] and `num_boxes` random valid boxes Tensor[K, 5] in image coordinates."""
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(batch, CHANNELS, HEIGHT, WIDTH, generator=g)
    image_size = torch.tensor([WIDTH, HEIGHT]) / SPATIAL_SCALE
    top_left = torch.rand(num_boxes, 2, generator=g) * image_size
    size = torch.rand(num_boxes, 2, generator=g) * image_size * 0.5 + 1
    bottom_right = torch.minimum(top_left + size, image_size)
    batch_index = torch.randint(0, batch, (num_boxes, 1), generator=g).float()
    return input, torch.cat([batch_index, top_left, bottom_right], dim=1)


def _forward_backward(fn, input, boxes, grad):
    x = input.detach().requires_grad_()
    return torch.autograd.grad(fn(x, boxes), x, grad)[0]


def _align(output_size, sampling_ratio=2):
    return (
        lambda x, b: segops.roi_align(x, b, output_size, SPATIAL_SCALE, sampling_ratio, True),
        lambda x, b: torchvision.ops.roi_align(x, b, output_size, SPATIAL_SCALE, sampling_ratio, True),
    )


def _pool(output_size):
    return (
        lambda x, b: segops.roi_pool(x, b, output_size, SPATIAL_SCALE),
        lambda x, b: torchvision.ops.roi_pool(x, b, output_size, SPATIAL_SCALE),
    )


def _forward_case(name, target, ops, input, boxes, sweep=None):
    ours, theirs = ops
    return Case(name, target, lambda: ours(input, boxes), lambda: theirs(input, boxes), sweep)


def _forward_backward_case(name, target, ops, input, boxes, sweep=None):
    ours, theirs = ops
    grad = torch.randn_like(ours(input, boxes))
    return Case(
        name,
        target,
        lambda: _forward_backward(ours, input, boxes, grad),
        lambda: _forward_backward(theirs, input, boxes, grad),
        sweep,
    )


def cases():
    """The headline cases (512 proposals; docs/benchmarks.md), the sweep over box counts, a call's fixed cost and
    Mask R-CNN's mask head."""
    input, boxes = make_inputs()
    swept = {"roi_align 7x7": _align(7), "roi_pool 7x7": _pool(7)}
    result = []
    for name, ops in [
        ("roi_align 7x7", swept["roi_align 7x7"]),
        ("roi_align 14x14", _align(14)),
        ("roi_pool 7x7", swept["roi_pool 7x7"]),
    ]:
        # The 512-box cases of the swept ops are the sweep's K=512 points.
        sweep = (lambda pass_: (name, pass_, NUM_BOXES)) if name in swept else (lambda pass_: None)
        result.append(_forward_case(f"{name} forward", 1.8, ops, input, boxes, sweep("forward")))
        if name == "roi_align 7x7":
            # channels_last is read in place, without a layout copy.
            input_cl = input.contiguous(memory_format=torch.channels_last)
            result.append(_forward_case(f"{name} forward, channels_last input", 1.8, ops, input_cl, boxes))
        result.append(
            _forward_backward_case(f"{name} forward+backward", 3.0, ops, input, boxes, sweep("forward+backward"))
        )

    for name, ops in swept.items():
        for num_boxes in SWEEP_BOXES:
            if num_boxes == NUM_BOXES:
                continue
            _, sweep_boxes = make_inputs(seed=1, num_boxes=num_boxes)
            result.append(
                _forward_case(
                    f"{name} forward, K={num_boxes}", 1.8, ops, input, sweep_boxes, (name, "forward", num_boxes)
                )
            )
            result.append(
                _forward_backward_case(
                    f"{name} forward+backward, K={num_boxes}",
                    3.0 if num_boxes >= 512 else 1.2,
                    ops,
                    input,
                    sweep_boxes,
                    (name, "forward+backward", num_boxes),
                )
            )

    # A call's fixed cost: one box on a tiny map. The target is "at most 1.5x torchvision's time".
    small = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    one_box = torch.tensor([[0.0, 1.0, 2.0, 11.0, 13.0]])
    fixed_cost_ops = {
        "roi_align 7x7": (
            lambda x, b: segops.roi_align(x, b, 7, 1.0, 2, True),
            lambda x, b: torchvision.ops.roi_align(x, b, 7, 1.0, 2, True),
        ),
        "roi_pool 7x7": (
            lambda x, b: segops.roi_pool(x, b, 7, 1.0),
            lambda x, b: torchvision.ops.roi_pool(x, b, 7, 1.0),
        ),
    }
    for name, ops in fixed_cost_ops.items():
        result.append(_forward_case(f"{name} fixed cost, 1 box on [1, 8, 16, 16]", 1 / 1.5, ops, small, one_box))

    result += _position_sensitive_cases()

    # Mask R-CNN's mask head at inference: 100 detections on the stride-4 map of one 800x1216 image, 14x14 bins.
    image, detections = make_inputs(seed=3, num_boxes=100, batch=1)
    result.append(
        _forward_case("mask head: roi_align 14x14, 100 boxes, [1, 256, 200, 304]", 2.0, _align(14), image, detections)
    )
    return result


# R-FCN's position-sensitive score maps: 7 x 7 bins of 21 classes (VOC + background) on the stride-8 map of an
# 800 x 1200 image.
PS_CHANNELS, PS_HEIGHT, PS_WIDTH, PS_SCALE = 7 * 7 * 21, 100, 150, 1 / 8


def _position_sensitive_cases():
    """ps_roi_align (2 samples per bin axis) and ps_roi_pool against torchvision's, forward and forward+backward, at
    every box count of the sweep."""
    g = torch.Generator().manual_seed(4)
    input = torch.randn(1, PS_CHANNELS, PS_HEIGHT, PS_WIDTH, generator=g)
    # Boxes end two map pixels short of the right and bottom edges: torchvision's ps_roi_pool forward never reads the
    # map's last row and column (docs/operators.md), so outputs agree only away from them.
    image_size = torch.tensor([PS_WIDTH - 2, PS_HEIGHT - 2]) / PS_SCALE
    ops = {
        "ps_roi_align 7x7": (
            lambda x, b: segops.ps_roi_align(x, b, 7, PS_SCALE, 2),
            lambda x, b: torchvision.ops.ps_roi_align(x, b, 7, PS_SCALE, 2),
        ),
        "ps_roi_pool 7x7": (
            lambda x, b: segops.ps_roi_pool(x, b, 7, PS_SCALE),
            lambda x, b: torchvision.ops.ps_roi_pool(x, b, 7, PS_SCALE),
        ),
    }
    result = []
    for num_boxes in SWEEP_BOXES:
        top_left = torch.rand(num_boxes, 2, generator=g) * image_size
        size = torch.rand(num_boxes, 2, generator=g) * image_size * 0.5 + 1
        boxes = torch.cat([torch.zeros(num_boxes, 1), top_left, torch.minimum(top_left + size, image_size)], dim=1)
        for name, pair in ops.items():
            label = f"{name} on [1, {PS_CHANNELS}, {PS_HEIGHT}, {PS_WIDTH}], K={num_boxes}"
            result.append(_forward_case(f"{label} forward", 2.0, pair, input, boxes, (name, "forward", num_boxes)))
            result.append(
                _forward_backward_case(
                    f"{label} forward+backward", 2.0, pair, input, boxes, (name, "forward+backward", num_boxes)
                )
            )
    return result
