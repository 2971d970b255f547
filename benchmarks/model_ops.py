"""Model cases: forward and forward+backward of each segops.models network, each against the same network (same weights)
on PyTorch's own operators where segops' ops appear in it: nn.Conv2d for segops.DilatedConv2d (FCN-8s's and
DeconvNet's fc6/fc7, DeepLab, PSPNet, BASNet), F.max_unpool2d for segops.max_unpool2d (SegNet, DeconvNet),
F.grid_sample for segops.flow_warp (Deep Feature Flow). U-Net, PoolNet and DCL (without its CRF) use no segops
operator: they are timed alone. Both passes in eval mode (batch norm frozen, as DeepLab and PSPNet fine-tune at small
batches), with batch-norm statistics first measured on a random batch so that the randomly initialised networks are
normalised as trained ones are (uncalibrated, a ResNet-101's activations grow layer by layer and float32 rounding
differences with them); forward without gradients, forward+backward computing the gradients of every parameter and of
the images, as a training step does (the images' gradient is compared)."""

import contextlib
import copy
import functools
import importlib

import torch
import torch.nn.functional as F
from torch import nn

from segops import DilatedConv2d, models
from segops.reference import flow_warp as grid_sample_flow_warp
from benchmarks.case import Case

segnet_module = importlib.import_module("segops.models.segnet")
dff_module = importlib.import_module("segops.models.dff")

NUM_CLASSES = 21  # PASCAL VOC
# A segops network at least as fast as the same network on PyTorch's ops (the CPU-limits issue's bar); every layer
# but segops' is PyTorch's on both sides.
TARGET = 1.0


def on_pytorch_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` (same weights) whose segops.DilatedConv2d layers are nn.Conv2d."""
    model = copy.deepcopy(model)

    def replace(module):
        for name, child in module.named_children():
            if isinstance(child, DilatedConv2d):
                conv = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    bias=child.bias is not None,
                )
                conv.weight, conv.bias = child.weight, child.bias
                setattr(module, name, conv)
            else:
                replace(child)

    replace(model)
    return model


@contextlib.contextmanager
def pytorch_functional_ops():
    """SegNet's and DeconvNet's unpooling and DFF's warp on PyTorch's operators while the block runs."""
    saved = segnet_module.max_unpool2d, dff_module.flow_warp
    segnet_module.max_unpool2d = lambda x, indices, kernel_size, output_size: F.max_unpool2d(
        x, indices, kernel_size, output_size=output_size
    )
    dff_module.flow_warp = grid_sample_flow_warp
    try:
        yield
    finally:
        segnet_module.max_unpool2d, dff_module.flow_warp = saved


def calibrate_batch_norm(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Sets every batch norm's running statistics to those of one forward pass of `inputs`; returns model.eval()."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        model.train()(inputs)
    return model.eval()


def _main_output(output):
    """The semantic models' logits ({"out": ...}, torchvision's convention), or the model's one tensor."""
    return output["out"] if isinstance(output, dict) else output


def _forward(model, inputs):
    def run():
        with torch.no_grad():
            return _main_output(model(inputs))

    return run


def _forward_backward(model, inputs):
    """A training step's passes: the gradients of every parameter and of the images (returned)."""

    def run():
        model.zero_grad(set_to_none=True)
        images = inputs.detach().requires_grad_()
        _main_output(model(images)).square().mean().backward()
        return images.grad

    return run


def _on_pytorch(run):
    def wrapped():
        with pytorch_functional_ops():
            return run()

    return wrapped


def _relative_error(actual, exact):
    return ((actual.double() - exact).norm() / exact.norm()).item()


def _agreement(make, index):
    """Agreement of whole networks, as flash-attention judges low precision: segops' float32 result is at most twice
    as far from the float64 result (the same net on PyTorch's ops in float64, computed here) as PyTorch's own float32
    result is. Through ~100 layers the two float32 sides differ by as much as each differs from the exact result
    (the gradient of the images sums terms that largely cancel), so elementwise closeness would test nothing."""

    def check(actual, expected):
        _, reference, inputs = networks(index)
        exact = _on_pytorch(make(copy.deepcopy(reference).double(), inputs.double()))()
        ours, theirs = _relative_error(actual, exact), _relative_error(expected, exact)
        return ours <= 2 * theirs + 1e-12, f"relative L2 error vs float64: segops {ours:.1e}, PyTorch {theirs:.1e}"

    return check


def fcn8s_with_drawn_scores():
    """FCN-8s with its class-score layers drawn as nn.Conv2d draws them: zero-initialised, as the paper's are, they
    make the logits and the images' gradient exactly zero on both sides, which agree trivially."""
    model = models.fcn8s(NUM_CLASSES)
    for score in (model.score_fr, model.score_pool4, model.score_pool3):
        score.reset_parameters()
    return model


class RefinedMap(nn.Module):
    """BASNet returning its refined map only (the one used at inference), so that every case's output is a tensor."""

    def __init__(self, basnet: nn.Module):
        super().__init__()
        self.basnet = basnet

    def forward(self, images):
        return self.basnet(images)[0]


# Networks built on PyTorch's operators only: timed alone.
WITHOUT_SEGOPS_OPS = ("unet", "poolnet", "dcl")

# (name, builder, input shape [N, 3, H, W] or [N, T, 3, H, W]); DeepLab v3 at three sizes (batch 1 and 4, a 256 and
# a 513 crop), the others at one.
MODELS = [
    ("fcn8s", fcn8s_with_drawn_scores, (1, 3, 256, 256)),
    ("segnet", lambda: models.segnet(NUM_CLASSES), (1, 3, 256, 256)),
    ("deconvnet", lambda: models.deconvnet(NUM_CLASSES), (1, 3, 256, 256)),
    ("unet", lambda: models.unet(NUM_CLASSES), (1, 3, 256, 256)),
    ("deeplabv2 (ResNet-101)", lambda: models.deeplabv2(NUM_CLASSES), (1, 3, 256, 256)),
    ("deeplabv3 (ResNet-101, os 16)", lambda: models.deeplabv3(NUM_CLASSES), (1, 3, 256, 256)),
    ("deeplabv3 (ResNet-101, os 16)", lambda: models.deeplabv3(NUM_CLASSES), (4, 3, 256, 256)),
    ("deeplabv3 (ResNet-101, os 16)", lambda: models.deeplabv3(NUM_CLASSES), (1, 3, 513, 513)),
    ("pspnet (ResNet-101)", lambda: models.pspnet(NUM_CLASSES), (1, 3, 256, 256)),
    # A clip of 5 frames, one key frame: the feature network once, the flow network and the warp 4 times.
    (
        "deep_feature_flow (ResNet-101)",
        lambda: models.deep_feature_flow(NUM_CLASSES, key_interval=5),
        (1, 5, 3, 256, 256),
    ),
    ("basnet (ResNet-34)", lambda: RefinedMap(models.basnet()), (1, 3, 256, 256)),
    ("poolnet (ResNet-50)", lambda: models.poolnet(), (1, 3, 256, 256)),
    ("dcl (VGG16)", lambda: models.dcl(), (1, 3, 256, 256)),
]


@functools.lru_cache(maxsize=1)  # one network in memory at a time: a network's cases run one after the other
def networks(index):
    """MODELS[index] built: (the segops network, the same on PyTorch's convolutions, its inputs). Built when a case
    first runs, so that `--filter` runs of other cases build none."""
    _, build, shape = MODELS[index]
    torch.manual_seed(0)
    # Batch 2 at least: batch norm after global pooling (DeepLab v3, PSPNet) needs 2 values per channel.
    calibration = torch.randn((max(2, shape[0]), *shape[1:]), generator=torch.Generator().manual_seed(1))
    model = calibrate_batch_norm(build(), calibration)
    return model, on_pytorch_convs(model), torch.randn(shape, generator=torch.Generator().manual_seed(0))


def cases():
    result = []
    for index, (name, _, shape) in enumerate(MODELS):
        uses_segops = name.split()[0] not in WITHOUT_SEGOPS_OPS
        label = f"model {name} {list(shape)}"
        for pass_, make in (("forward", _forward), ("forward+backward", _forward_backward)):

            def ours(index=index, make=make):
                model, _, inputs = networks(index)
                return make(model, inputs)()

            def theirs(index=index, make=make):
                _, reference, inputs = networks(index)
                return _on_pytorch(make(reference, inputs))()

            result.append(
                Case(
                    f"{label} {pass_}",
                    TARGET,
                    ours,
                    theirs if uses_segops else None,
                    reference="same net on PyTorch ops",
                    agreement=_agreement(make, index),
                )
            )
    return result
