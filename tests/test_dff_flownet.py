"""Deep Feature Flow's flow network: FlowNetS (Dosovitskiy et al. 2015) layer for layer as DFF's released code
builds it (Zhu et al. 2017), its parameter count, the strides of its maps and its output, and DFF end to end
through it."""

import math

import pytest
import torch
import torch.nn.functional as F

import segops.models as models


def _parameters(module):
    return sum(p.numel() for p in module.parameters())


def _conv(kernel, c_in, c_out):
    """Parameters of a convolution (or up-convolution) with bias."""
    return kernel * kernel * c_in * c_out + c_out


# FlowNetS's contracting part: (name, kernel, stride, in, out).
CONTRACTING = [
    ("conv1", 7, 2, 6, 64),
    ("conv2", 5, 2, 64, 128),
    ("conv3", 5, 2, 128, 256),
    ("conv3_1", 3, 1, 256, 256),
    ("conv4", 3, 2, 256, 512),
    ("conv4_1", 3, 1, 512, 512),
    ("conv5", 3, 2, 512, 512),
    ("conv5_1", 3, 1, 512, 512),
    ("conv6", 3, 2, 512, 1024),
    ("conv6_1", 3, 1, 1024, 1024),
]
# Its refinement, per level (6 to 3): the input's channels (conv6_1, then each concatenation of the finer
# contracting map, the up-convolved features and the up-convolved flow) and the up-convolved features'.
REFINEMENT_INPUTS = [1024, 512 + 512 + 2, 512 + 256 + 2, 256 + 128 + 2]
DECONV_OUTPUTS = [512, 256, 128, 64]
LAST_CONCATENATION = 128 + 64 + 2  # conv2, deconv2, the flow from level 3


def test_flownet_s_layers():
    net = models.FlowNet(1024)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.in_channels, c.out_channels) for c in convs] == [
        row[1:] for row in CONTRACTING
    ]
    assert all(c.padding[0] == c.kernel_size[0] // 2 for c in convs)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1} and sum(isinstance(m, torch.nn.LeakyReLU) for m in net.modules()) == 10 + 4
    assert [p.in_channels for p in net.predict_coarse] == REFINEMENT_INPUTS
    assert all(p.kernel_size == (3, 3) and p.out_channels == 2 for p in net.predict_coarse)
    deconvs = [d[0] for d in net.deconvs]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == list(zip(REFINEMENT_INPUTS, DECONV_OUTPUTS))
    for up in deconvs + list(net.upsample_flows):
        assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
    assert net.predict_flow.in_channels == net.predict_scale.in_channels == LAST_CONCATENATION
    assert net.predict_flow.kernel_size == (3, 3) and net.predict_scale.kernel_size == (1, 1)
    assert net.predict_scale.out_channels == 1024  # DFF's scale field: one factor per feature channel


def test_flownet_s_parameter_count():
    """38,676,514 parameters without DFF's scale predictor: FlowNetS with conv6_1 and a bias in every layer, as
    DFF's code builds it. FlowNetS is quoted at 38.67M (e.g. in LiteFlowNet's comparison, Hui et al. 2018), and
    NVIDIA's flownet2-pytorch states 38,676,504 for its FlowNetS, 10 fewer (five 2-channel biases' worth)."""
    contracting = sum(_conv(k, c_in, c_out) for _, k, _, c_in, c_out in CONTRACTING)
    assert contracting == 24_050_752
    predict_flows = sum(_conv(3, c, 2) for c in REFINEMENT_INPUTS + [LAST_CONCATENATION])  # predict_flow6 ... 2
    deconvs = sum(_conv(4, c_in, c_out) for c_in, c_out in zip(REFINEMENT_INPUTS, DECONV_OUTPUTS))
    upsample_flows = 4 * _conv(4, 2, 2)
    flownet_s = contracting + predict_flows + deconvs + upsample_flows
    assert flownet_s == 38_676_514
    net = models.FlowNet(1024)
    assert _parameters(net) - _parameters(net.predict_scale) == flownet_s
    assert _parameters(net.predict_scale) == _conv(1, LAST_CONCATENATION, 1024)
    assert abs(flownet_s - 38.67e6) <= 1e-3 * 38.67e6 and abs(flownet_s - 38_676_504) == 10
    # DFF's "FlowNet Half": every layer half as wide, a quarter of the parameters (give or take the biases and the
    # 2-channel flows).
    assert _parameters(models.FlowNet(1024, width=32)) - _parameters(models.FlowNet(1024, width=32).predict_scale) == (
        pytest.approx(flownet_s / 4, rel=0.01)
    )


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (100, 36)])
def test_flow_strides(size):
    """The frames are halved; FlowNetS's contracting maps are at strides 2 ... 64 of that half-size input and its
    last refinement at stride 4 (8 of the frames); DFF's flow and scale at the feature stride, 16 (rounded up)."""
    torch.manual_seed(0)
    net = models.FlowNet(16, width=8).eval()
    with torch.no_grad():
        net.predict_flow.weight.normal_()
    seen = {}
    net.predict_flow.register_forward_hook(lambda m, i, o: seen.__setitem__("predict_flow", o))
    stages = []
    for stage in net.encoder:
        stage.register_forward_hook(lambda m, i, o: stages.append(o.shape[-2:]))
    height, width = size
    frame, key = torch.randn(2, 3, height, width), torch.randn(2, 3, height, width)
    with torch.no_grad():
        flow, scale = net(frame, key)

    def at(stride):
        return (math.ceil(height / stride), math.ceil(width / stride))

    # conv2 (FlowNetS's last refinement level, where it predicts its quarter-size flow), conv3_1, ..., conv6_1.
    assert stages == [at(8), at(16), at(32), at(64), at(128)]
    assert flow.shape == (2, 2, *at(16)) and scale.shape == (2, 16, *at(16))
    # In feature-map pixels: FlowNet's flow / 20 in pixels of its half-size input, times 20 / 8.
    assert torch.equal(flow, seen["predict_flow"] * 2.5)


def test_untrained_flownet_predicts_no_motion_and_unit_scale():
    net = models.FlowNet(8, width=8)
    flow, scale = net(torch.randn(1, 3, 64, 48), torch.randn(1, 3, 64, 48))
    assert torch.equal(flow, torch.zeros(1, 2, 4, 3)) and torch.equal(scale, torch.ones(1, 8, 4, 3))


def test_dff_with_full_flownet_s_forward_and_backward():
    """deep_feature_flow's default flow network is the full FlowNetS; DFF's training step through it (here with a
    one-layer stride-16 feature network, for speed: tests/test_models.py runs the dilated ResNet) reaches every one
    of its parameters."""
    built = models.deep_feature_flow(3, depth=50, feature_channels=16)
    assert isinstance(built.flow_net, models.FlowNet)
    assert _parameters(built.flow_net) - _parameters(built.flow_net.predict_scale) == 38_676_514
    torch.manual_seed(0)
    model = models.DeepFeatureFlow(
        torch.nn.Conv2d(3, 16, 16, stride=16), torch.nn.Conv2d(16, 3, 1), models.FlowNet(16), scheduler=2
    )
    with torch.no_grad():
        model.flow_net.predict_flow.weight.normal_(0, 0.1)  # away from zero, so that the flow carries gradients
    frame, key = torch.randn(1, 3, 64, 80), torch.randn(1, 3, 64, 80)
    logits = model.forward_pair(frame, key)
    assert logits.shape == (1, 3, 64, 80)
    F.cross_entropy(logits, torch.randint(0, 3, (1, 64, 80))).backward()
    missing = [name for name, p in model.flow_net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.FlowNet(0), "FlowNet: feature_channels must be an int >= 1, got 0"),
        (lambda: models.FlowNet(8, width=0), "FlowNet: width must be an int >= 1, got 0"),
    ],
)
def test_flownet_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
