"""Deep Feature Flow (Zhu, Xiong, Dai, Yuan and Wei 2017): the expensive feature network runs on key frames only;
on the frames between, a small flow network estimates the flow from the frame to its key frame and a scale field,
and segops.flow_warp carries the key frame's features along that flow; the cheap task head runs on every frame."""

from typing import Callable, Iterable, Iterator, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.resnet import DilatedResNet, Weights
from segops.ops.dilated_conv import DilatedConv2d
from segops.ops.flow_warp import flow_warp


class FixedIntervalScheduler:
    """DFF's key-frame schedule: frame t (counted from 0 in each video) is a key frame when t % interval == 0."""

    def __init__(self, interval: int):
        _check_int("FixedIntervalScheduler", "interval", interval)
        self.interval = interval

    def __call__(self, index: int, frame: Tensor) -> bool:
        return index % self.interval == 0

    def __repr__(self) -> str:
        return f"FixedIntervalScheduler(interval={self.interval})"


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2), nn.LeakyReLU(0.1, inplace=True)
    )


class FlowNet(nn.Module):
    """A small FlowNet-Simple (Dosovitskiy et al. 2015): the two frames stacked, [N, 6, H, W], through strided
    convolutions to stride 32, one refinement stage back to stride 16 (up-convolution concatenated with the
    stride-16 encoder map, as FlowNet's refinement does), and two 3x3 predictors there:
    flow [N, 2, H/16, W/16] (rounded up, the dilated ResNet's output size), in pixels of that map, and DFF's scale
    field [N, C, H/16, W/16].

    The predictors start at flow 0 and scale 1 (weights zero, biases 0 and 1; DFF initialises its scale predictor
    so), so an untrained network propagates the key frame's features unchanged."""

    def __init__(self, feature_channels: int, width: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(
            _conv_relu(6, width, 7, 2),
            _conv_relu(width, 2 * width, 5, 2),
            _conv_relu(2 * width, 4 * width, 5, 2),
            _conv_relu(4 * width, 4 * width, 3),
            _conv_relu(4 * width, 8 * width, 3, 2),
            _conv_relu(8 * width, 8 * width, 3),
        )
        self.bottom = nn.Sequential(_conv_relu(8 * width, 8 * width, 3, 2), _conv_relu(8 * width, 8 * width, 3))
        self.up = nn.Sequential(nn.ConvTranspose2d(8 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True))
        self.predict_flow = nn.Conv2d(12 * width, 2, 3, padding=1)
        self.predict_scale = nn.Conv2d(12 * width, feature_channels, 3, padding=1)
        for predictor, bias in ((self.predict_flow, 0.0), (self.predict_scale, 1.0)):
            nn.init.zeros_(predictor.weight)
            nn.init.constant_(predictor.bias, bias)

    def forward(self, frame: Tensor, key_frame: Tensor):
        """frame, key_frame [N, 3, H, W] -> (flow from frame to key frame [N, 2, h, w], scale [N, C, h, w])."""
        stride16 = self.encoder(torch.cat([frame, key_frame], dim=1))
        up = self.up(self.bottom(stride16))[..., : stride16.shape[-2], : stride16.shape[-1]]
        fused = torch.cat([stride16, up], dim=1)
        return self.predict_flow(fused), self.predict_scale(fused)


class DeepFeatureFlow(nn.Module):
    """Deep Feature Flow for video segmentation.

    Per frame I_t of a video: on a key frame (the scheduler says so) f_t = feature_net(I_t); otherwise
    f_t = flow_warp(f_k, flow, scale) with (flow, scale) = flow_net(I_t, I_k) and k the latest key frame; then
    logits_t = task_head(f_t), bilinearly upsampled to the frame. With a key frame on every frame this is per-frame
    inference, exactly.

    Args:
        feature_net: [N, 3, H, W] -> features [N, C, h, w].
        task_head: features [N, C, h, w] -> scores [N, K, h, w].
        flow_net: (frame, key_frame) -> (flow [N, 2, h', w'] in pixels of the feature map, scale [N, C or 1, h', w']);
            resized to the feature map (flow values rescaled) where h', w' differ from h, w.
        scheduler: an int (key frame every that many frames) or a callable (index, frame) -> bool.
    """

    def __init__(
        self,
        feature_net: nn.Module,
        task_head: nn.Module,
        flow_net: nn.Module,
        scheduler: Union[int, Callable[[int, Tensor], bool]] = 5,
    ):
        super().__init__()
        self.feature_net, self.task_head, self.flow_net = feature_net, task_head, flow_net
        self.scheduler = FixedIntervalScheduler(scheduler) if isinstance(scheduler, int) else scheduler

    def propagate(self, key_features: Tensor, key_frame: Tensor, frame: Tensor) -> Tensor:
        """The key frame's features [N, C, h, w] carried to `frame` (both frames [N, 3, H, W])."""
        flow, scale = self.flow_net(frame, key_frame)
        size = key_features.shape[-2:]
        if flow.shape[-2:] != size:
            factors = flow.new_tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]]).view(1, 2, 1, 1)
            flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * factors
            scale = F.interpolate(scale, size=size, mode="bilinear", align_corners=False)
        return flow_warp(key_features, flow, scale)

    def segment(self, features: Tensor, size) -> Tensor:
        """The task head on features [N, C, h, w], upsampled to `size` (H, W): logits [N, K, H, W]."""
        return F.interpolate(self.task_head(features), size=size, mode="bilinear", align_corners=False)

    def forward_pair(self, frame: Tensor, key_frame: Tensor) -> Tensor:
        """DFF's training step: logits [N, K, H, W] of `frame` from the features of `key_frame` (both [N, 3, H, W]),
        differentiable through the task head, the warp, the flow network and the feature network."""
        return self.segment(self.propagate(self.feature_net(key_frame), key_frame, frame), frame.shape[-2:])

    def stream(self, frames: Iterable[Tensor]) -> Iterator[Tensor]:
        """Segments a video frame by frame: frames [N, 3, H, W] in order -> logits [N, K, H, W] per frame, lazily,
        so a long video never holds more than one key frame's features."""
        key_frame = key_features = None
        for index, frame in enumerate(frames):
            if frame.dim() != 4 or frame.shape[1] != 3:
                raise ValueError(
                    f"DeepFeatureFlow: frame {index} must have shape [N, 3, H, W], got {list(frame.shape)}"
                )
            if key_features is None or self.scheduler(index, frame):
                key_frame, key_features = frame, self.feature_net(frame)
                features = key_features
            else:
                features = self.propagate(key_features, key_frame, frame)
            yield self.segment(features, frame.shape[-2:])

    def forward(self, frames: Tensor) -> Tensor:
        """frames [N, T, 3, H, W] (N videos of T frames) -> logits [N, T, K, H, W]."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"DeepFeatureFlow: frames must have shape [N, T, 3, H, W], got {list(frames.shape)}")
        return torch.stack(list(self.stream(frames.unbind(1))), dim=1)


def deep_feature_flow(
    num_classes: int, depth: int = 101, key_interval: int = 5, feature_channels: int = 1024, backbone: Weights = None
) -> DeepFeatureFlow:
    """DFF's segmentation network: a dilated ResNet (output stride 16; 101 layers unless depth=50; backbone weights
    as deeplabv2) and the paper's randomly initialised 3x3 convolution dilated 6 (segops.DilatedConv2d) to
    `feature_channels` (1024) as the feature network, a 1x1 classifier as the task head, FlowNet as the flow
    network, a key frame every `key_interval` frames (the paper's 5 on Cityscapes)."""
    _check_int("deep_feature_flow", "num_classes", num_classes)
    reduce = DilatedConv2d(2048, feature_channels, 3, padding=6, dilation=6)
    feature_net = nn.Sequential(DilatedResNet(depth, 16, backbone), reduce, nn.ReLU(inplace=True))
    return DeepFeatureFlow(
        feature_net, nn.Conv2d(feature_channels, num_classes, 1), FlowNet(feature_channels), key_interval
    )
