"""Deep Feature Flow (Zhu, Xiong, Dai, Yuan and Wei 2017): the expensive feature network runs on key frames only;
on the frames between, a flow network (FlowNetS) estimates the flow from the frame to its key frame and a scale field,
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
    """DFF's flow network: FlowNetS, FlowNet's "Simple" variant (Dosovitskiy et al. 2015), as Deep Feature Flow
    runs it (its section 4, and layer for layer its released code), with DFF's scale predictor.

    The frame and its key frame, stacked ([N, 6, H, W]) and average-pooled to half size (DFF feeds FlowNet
    half-sized frames), pass FlowNetS's contracting part: conv1 7x7/2 (`width` 64 channels), conv2 5x5/2 (128),
    conv3 5x5/2 (256), conv3_1 3x3 (256), conv4 3x3/2 (512), conv4_1 (512), conv5 3x3/2 (512), conv5_1 (512),
    conv6 3x3/2 (1024) and conv6_1 (1024), each followed by leaky ReLU 0.1. Its refinement follows: at strides
    64, 32, 16 and 8 of the half-size frames, a 3x3 flow prediction (predict_flow6 ... 3) and 4x4/2
    up-convolutions of the features (deconv5 ... 2, leaky ReLU) and of that flow (upsample_flow6to5 ... 3to2),
    concatenated with the contracting map of the finer stride (conv5_1, conv4_1, conv3_1, conv2). FlowNetS
    predicts its flow from the last concatenation, at a quarter of its input's size. DFF's features are at stride
    16 of the frames, 8 of FlowNet's input: it average-pools that concatenation 2x2 and predicts from it the flow
    [N, 2, h, w] (3x3, predict_flow2's shape) and the scale field [N, C, h, w] (1x1, `feature_channels` C), with
    h, w = ceil(H / 16), ceil(W / 16), the dilated ResNet's output size.

    The flow is in pixels of that map: FlowNet predicts flow / 20 in pixels of its input, so DFF multiplies by
    20 / 8 = 2.5, and FlowNetS's trained weights keep their meaning. The flow and scale predictors start at flow 0
    and scale 1 (weights zero, biases 0 and 1; DFF initialises its scale predictor so, and freezes that bias at 1:
    here it trains), so an untrained network propagates the key frame's features unchanged. At width 64, all but
    the scale predictor hold 38,676,514 parameters, FlowNetS's count. `width` 32 halves every layer, as DFF's
    lighter "FlowNet Half" does."""

    def __init__(self, feature_channels: int, width: int = 64):
        super().__init__()
        _check_int("FlowNet", "feature_channels", feature_channels)
        _check_int("FlowNet", "width", width)
        w = width
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(_conv_relu(6, w, 7, 2), _conv_relu(w, 2 * w, 5, 2)),  # conv1, conv2: stride 4
                nn.Sequential(_conv_relu(2 * w, 4 * w, 5, 2), _conv_relu(4 * w, 4 * w, 3)),  # conv3, conv3_1: 8
                nn.Sequential(_conv_relu(4 * w, 8 * w, 3, 2), _conv_relu(8 * w, 8 * w, 3)),  # conv4, conv4_1: 16
                nn.Sequential(_conv_relu(8 * w, 8 * w, 3, 2), _conv_relu(8 * w, 8 * w, 3)),  # conv5, conv5_1: 32
                nn.Sequential(_conv_relu(8 * w, 16 * w, 3, 2), _conv_relu(16 * w, 16 * w, 3)),  # conv6, conv6_1: 64
            ]
        )
        # Refinement, coarse to fine: the input channels of each level (1024, then the concatenations 1026, 770,
        # 386 at width 64) and the up-convolved features' channels (512, 256, 128, 64).
        inputs, outputs = [16 * w, 16 * w + 2, 12 * w + 2, 6 * w + 2], [8 * w, 4 * w, 2 * w, w]
        self.predict_coarse = nn.ModuleList([nn.Conv2d(c, 2, 3, padding=1) for c in inputs])  # predict_flow6..3
        self.deconvs = nn.ModuleList(
            [
                nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True))
                for c_in, c_out in zip(inputs, outputs)
            ]
        )
        self.upsample_flows = nn.ModuleList([nn.ConvTranspose2d(2, 2, 4, 2, 1) for _ in inputs])
        # conv2 (2w) + deconv2 (w) + the upsampled flow (2): FlowNetS's last concatenation, 194 channels at 64.
        self.predict_flow = nn.Conv2d(3 * w + 2, 2, 3, padding=1)
        self.predict_scale = nn.Conv2d(3 * w + 2, feature_channels, 1)
        for predictor, bias in ((self.predict_flow, 0.0), (self.predict_scale, 1.0)):
            nn.init.zeros_(predictor.weight)
            nn.init.constant_(predictor.bias, bias)

    def forward(self, frame: Tensor, key_frame: Tensor):
        """frame, key_frame [N, 3, H, W] -> (flow from frame to key frame [N, 2, h, w], scale [N, C, h, w])."""
        x = F.avg_pool2d(torch.cat([frame, key_frame], dim=1), 2, ceil_mode=True)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for predict, deconv, upsample, skip in zip(
            self.predict_coarse, self.deconvs, self.upsample_flows, reversed(skips[:-1])
        ):
            # A 4x4/2 up-convolution padded by 1 doubles the size; cropped to the finer map's (an odd one's).
            height, width = skip.shape[-2:]
            features = deconv(x)[..., :height, :width]
            flow = upsample(predict(x))[..., :height, :width]
            x = torch.cat([skip, features, flow], dim=1)
        fused = F.avg_pool2d(x, 2, ceil_mode=True)
        return self.predict_flow(fused) * 2.5, self.predict_scale(fused)


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
    `feature_channels` (1024) as the feature network, a 1x1 classifier as the task head, FlowNet (FlowNetS, as DFF
    runs it) as the flow network, a key frame every `key_interval` frames (the paper's 5 on Cityscapes)."""
    _check_int("deep_feature_flow", "num_classes", num_classes)
    reduce = DilatedConv2d(2048, feature_channels, 3, padding=6, dilation=6)
    feature_net = nn.Sequential(DilatedResNet(depth, 16, backbone), reduce, nn.ReLU(inplace=True))
    return DeepFeatureFlow(
        feature_net, nn.Conv2d(feature_channels, num_classes, 1), FlowNet(feature_channels), key_interval
    )
