"""RoIAlign / RoIPool cases: segops against torchvision.ops on the same inputs, in one process."""

import torch
import torchvision

import segops

# The workload: an FPN level-2 feature map of an 800x1216 image pair and 512 proposals.
BATCH, CHANNELS, HEIGHT, WIDTH = 2, 256, 200, 304
SPATIAL_SCALE = 0.25
NUM_BOXES = 512


def make_inputs(seed=0):
    """input Tensor[2, 256, 200, 304] and 512 random valid boxes Tensor[K, 5] in image coordinates."""
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=g)
    image_size = torch.tensor([WIDTH, HEIGHT]) / SPATIAL_SCALE
    top_left = torch.rand(NUM_BOXES, 2, generator=g) * image_size
    size = torch.rand(NUM_BOXES, 2, generator=g) * image_size * 0.5 + 1
    bottom_right = torch.minimum(top_left + size, image_size)
    batch_index = torch.randint(0, BATCH, (NUM_BOXES, 1), generator=g).float()
    return input, torch.cat([batch_index, top_left, bottom_right], dim=1)


def _forward_backward(fn, input, boxes, grad):
    x = input.detach().requires_grad_()
    return torch.autograd.grad(fn(x, boxes), x, grad)[0]


def cases():
    """(name, target speedup, segops callable, torchvision callable), each callable returning the tensor whose
    agreement is checked: the output for a forward case, the input gradient for a forward+backward case."""
    input, boxes = make_inputs()
    ops = [
        ("roi_align 7x7", 2.0, 3.0,
         lambda x, b: segops.roi_align(x, b, 7, SPATIAL_SCALE, 2, True),
         lambda x, b: torchvision.ops.roi_align(x, b, 7, SPATIAL_SCALE, 2, True)),
        ("roi_align 14x14", 2.0, 3.0,
         lambda x, b: segops.roi_align(x, b, 14, SPATIAL_SCALE, 2, True),
         lambda x, b: torchvision.ops.roi_align(x, b, 14, SPATIAL_SCALE, 2, True)),
        ("roi_pool 7x7", 2.0, 2.0,
         lambda x, b: segops.roi_pool(x, b, 7, SPATIAL_SCALE),
         lambda x, b: torchvision.ops.roi_pool(x, b, 7, SPATIAL_SCALE)),
    ]
    result = []
    for name, forward_target, backward_target, ours, theirs in ops:
        result.append((f"{name} forward", forward_target, (lambda f=ours: f(input, boxes)),
                       (lambda f=theirs: f(input, boxes))))
        if name == "roi_align 7x7":
            # A channels_last input may cost segops one copy (to NCHW) and no more.
            input_cl = input.contiguous(memory_format=torch.channels_last)
            result.append((f"{name} forward, channels_last input", forward_target,
                           (lambda f=ours: f(input_cl, boxes)), (lambda f=theirs: f(input_cl, boxes))))
        grad = torch.randn_like(ours(input, boxes))
        result.append((f"{name} forward+backward", backward_target,
                       (lambda f=ours, g=grad: _forward_backward(f, input, boxes, g)),
                       (lambda f=theirs, g=grad: _forward_backward(f, input, boxes, g))))
    return result
