"""Saliency networks (segops.models.dcl, basnet, poolnet): probabilities at the input size; the papers' structure
where it matters (BASNet's parameter count against the paper's 87.06M, its 8 outputs, atrous bridge on segops and
residual refinement; DCL's one-channel side outputs, segment-wise pooling stream and CRF; PoolNet's guidance and
aggregation); BASNet's deep-supervision loss; torchvision backbone weights arriving in the models; other input
channel counts; every argument error; and a few steps that learn."""

import pytest
import torch
import torchvision
from torch.nn import functional as F

import segops
import segops.models as models
from segops.losses import hybrid_loss
from segops.models.saliency import SegmentPooling, grid_segments

BUILDERS = {
    "dcl": lambda **options: models.dcl(base_width=8, **options),
    "basnet": lambda **options: models.basnet(width=16, **options),
    "poolnet": lambda **options: models.poolnet(width=16, **options),
}


def _saliency(out):
    return out[0] if isinstance(out, tuple) else out  # BASNet: the refined map


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_saliency_models_give_probabilities_at_the_input_size(name, size):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    with torch.no_grad():
        saliency = _saliency(model(torch.randn(2, 3, *size)))
    assert saliency.shape == (2, 1, *size)
    assert ((saliency > 0) & (saliency < 1)).all()


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("in_channels", [1, 4])
def test_saliency_models_take_other_channel_counts(name, in_channels):
    torch.manual_seed(0)
    model = BUILDERS[name](in_channels=in_channels).eval()
    with torch.no_grad():
        saliency = _saliency(model(torch.randn(2, in_channels, 64, 64)))
    assert saliency.shape == (2, 1, 64, 64) and ((saliency > 0) & (saliency < 1)).all()
    owner = type(model).__name__
    with pytest.raises(
        ValueError,
        match=rf"{owner}: images must be a Tensor\[N, {in_channels}, H, W\] \(in_channels\), "
        r"got \[2, 3, 64, 64\]",
    ):
        model(torch.randn(2, 3, 64, 64))


# ------------------------------------------------------------------------------------------------------ BASNet

PAPER_PARAMETERS = 87.06e6  # Qin et al. 2019: BASNet's parameters


def test_basnet_has_the_papers_parameters_encoder_and_8_outputs():
    torch.manual_seed(0)
    model = models.basnet().eval()
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(parameters - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.015, parameters
    # The paper's encoder: a 64-filter 3x3 stride-1 input convolution, ResNet-34's stages, two more of 512 filters
    # (each a 2x2 max pool and three basic blocks); its strides 1, 2, 4, 8, 16, 32 on a 64x64 image.
    stem_conv = model.stem[0]
    assert (stem_conv.out_channels, stem_conv.kernel_size, stem_conv.stride) == (64, (3, 3), (1, 1))
    shapes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for stage in model.encoder]
    bridge_convs = [m for m in model.bridge.modules() if isinstance(m, segops.DilatedConv2d)]
    assert [(c.out_channels, c.dilation) for c in bridge_convs] == [(512, (2, 2))] * 3
    with torch.no_grad():
        refined, sides = model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert shapes == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert len([refined, *sides]) == 8 and all(s.shape == (1, 1, 64, 64) for s in [refined, *sides])
    # The decoder's stages end at the widths of the paper's (512, 512, 256, 128, 64, 64), the side outputs' inputs.
    assert [side.in_channels for side in model.sides] == [512, 512, 512, 256, 128, 64, 64]


def test_basnet_side_outputs_refinement_and_loss():
    torch.manual_seed(0)
    model = models.basnet(width=16).eval()
    assert sum(isinstance(m, segops.DilatedConv2d) for m in model.bridge.modules()) == 3
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        refined, sides = model(images)
        assert len(sides) == 7 and all(s.shape == (1, 1, 64, 80) for s in sides)
        # The refinement adds a residual to the coarse (last side) map's logits: without it, refined == coarse.
        model.refine.out.weight.zero_()
        model.refine.out.bias.zero_()
        unrefined, sides = model(images)
        torch.testing.assert_close(unrefined, sides[-1])
    target = (torch.rand(1, 1, 64, 80) > 0.5).float()
    outputs = (refined, sides)
    expected = hybrid_loss(refined, target) + sum(hybrid_loss(s, target) for s in sides)
    torch.testing.assert_close(models.basnet_loss(outputs, target), expected)
    with pytest.raises(
        ValueError,
        match=r"basnet_loss: outputs must be BASNet's \(refined, list of side outputs\) "
        r"pair, got Tensor",
    ):
        models.basnet_loss(refined, target)
    with pytest.raises(
        ValueError,
        match=r"basnet_loss: target must have the outputs' shape \[1, 1, 64, 80\], got "
        r"\[1, 64, 80\]",
    ):
        models.basnet_loss(outputs, target[:, 0])


def test_basnet_learns():
    torch.manual_seed(0)
    model = models.basnet(width=16)
    target = torch.zeros(2, 1, 64, 64)
    target[0, :, 10:40, 8:30] = 1
    target[1, :, 30:60, 20:50] = 1
    images = torch.rand(2, 3, 64, 64) * 0.3 + 0.6 * target  # a brighter object on a noisy background
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = models.basnet_loss(model(images), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# --------------------------------------------------------------------------------------------------------- DCL


def test_dcl_fuses_five_one_channel_sides_and_refines_with_the_dense_crf():
    torch.manual_seed(0)
    model = models.dcl(base_width=8, crf=True).eval()
    # The paper's side streams: 3x3 to 128 channels, 1x1 to 128, 1x1 to one channel; five one-channel maps fused.
    assert [
        [(c.out_channels, c.kernel_size) for c in side if isinstance(c, torch.nn.Conv2d)] for side in model.sides
    ] == [[(128, (3, 3)), (128, (1, 1)), (1, (1, 1))]] * 5
    assert (model.fuse.in_channels, model.fuse.out_channels) == (5, 1)
    images, rgb = torch.randn(1, 3, 64, 72), torch.rand(1, 3, 64, 72) * 255
    with torch.no_grad():
        plain = models.dcl(base_width=8).eval()
        plain.load_state_dict(model.state_dict())
        p = plain(images)
        # The streams' fusion starts as the mean of their logits.
        pixel, segment = plain.streams(images)
        torch.testing.assert_close(p, torch.sigmoid((pixel + segment) / 2))
        logits = torch.cat([torch.log1p(-p.clamp(max=1 - 1e-6)), p.clamp_min(1e-6).log()], dim=1)
        torch.testing.assert_close(model(images, rgb), segops.dense_crf(logits, rgb)[:, 1:])
    assert torch.equal(model.train()(images), plain.train()(images))  # the CRF at evaluation only
    grey = models.dcl(base_width=8, crf=True, in_channels=1).eval()
    with torch.no_grad():
        assert grey(images[:, :1], rgb).shape == (1, 1, 64, 72)
        with pytest.raises(
            ValueError,
            match=r"DCL: rgb \(Tensor\[N, 3, H, W\] in 0..255\) must be given for the CRF "
            r"when in_channels is not 3, got None with in_channels=1",
        ):
            grey(images[:, :1])


def test_grid_segments_number_squares_row_by_row():
    labels = grid_segments(40, 37, 16)
    expected = torch.tensor([[(y // 16) * 3 + x // 16 for x in range(37)] for y in range(40)])
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)
    with pytest.raises(ValueError, match="grid_segments: cell must be an int >= 1, got 0"):
        grid_segments(40, 37, 0)


def _reference_segment_logits(pooling, features, labels):
    """SegmentPooling's documented pooling, pixel by pixel and box by box in Python, scored by its classifier."""
    n, channels, h, w = features.shape
    stride, count = pooling.stride, int(labels.max()) + 1
    logits = torch.zeros(n, 1, *labels.shape[-2:], dtype=features.dtype)
    for i in range(n):
        whole = features[i].mean((1, 2))
        for k in range(count):
            ys, xs = torch.nonzero(labels[i] == k, as_tuple=True)
            if len(ys) == 0:
                continue
            own = torch.stack([features[i, :, y // stride, x // stride] for y, x in zip(ys.tolist(), xs.tolist())])
            own = own.mean(0)
            top, bottom = int(ys.min()) // stride, int(ys.max()) // stride
            left, right = int(xs.min()) // stride, int(xs.max()) // stride
            grow_r, grow_c = bottom - top + 1, right - left + 1
            box = features[
                i,
                :,
                max(top - grow_r, 0) : min(bottom + grow_r, h - 1) + 1,
                max(left - grow_c, 0) : min(right + grow_c, w - 1) + 1,
            ]
            descriptor = torch.cat([own, own - box.mean((1, 2)), own - whole])
            logits[i, 0][labels[i] == k] = pooling.classifier(descriptor)
    return logits


def test_segment_pooling_equals_its_definition_pixel_by_pixel():
    torch.manual_seed(0)
    pooling = SegmentPooling(6, width=8, stride=4).double()
    features = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    # Segments of 18 x 23 pixels (cells of 4: 5 x 6 of them, the last cut): random rectangles over a background,
    # straddling cells, one label (7) unused.
    labels = torch.zeros(2, 18, 23, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        for k in (1, 2, 3, 4, 5, 6, 8):
            y, x = (
                torch.randint(0, 16, (1,), generator=generator).item(),
                torch.randint(0, 21, (1,), generator=generator).item(),
            )
            labels[i, y : y + 1 + k, x : x + 2 + k % 3] = k
    logits = pooling(features, labels, 9)
    torch.testing.assert_close(logits, _reference_segment_logits(pooling, features, labels), rtol=1e-12, atol=1e-12)
    # Gradient reaches the features through every part of the descriptor.
    features.requires_grad_(True)
    pooling(features, labels, 9).sum().backward()
    assert features.grad.abs().sum() > 0


def test_dcl_segment_stream_follows_the_segments_and_defaults_to_the_grid():
    torch.manual_seed(0)
    model = models.dcl(base_width=8).eval()
    images = torch.randn(2, 3, 64, 80)
    # Segments given as any integer labels (here numbered 10, 20, ...): the segment-level map is constant on each.
    segments = torch.zeros(2, 64, 80, dtype=torch.int64)
    segments[:, :, 30:] = 20
    segments[0, 10:50, 5:45] = 30
    segments[1, 40:, :] = 40
    with torch.no_grad():
        _, segment = model.streams(images, segments)
        for i in range(2):
            for label in segments[i].unique():
                values = segment[i, 0][segments[i] == label]
                assert torch.equal(values, values[:1].expand_as(values))
        assert model(images, segments=segments).shape == (2, 1, 64, 80)
        # Without segments, the grid of 16-pixel squares.
        grid = grid_segments(64, 80, 16).expand(2, -1, -1)
        assert torch.equal(model(images), model(images, segments=grid))
        assert not torch.equal(model(images), model(images, segments=segments))
    with pytest.raises(
        ValueError,
        match=r"DCL: segments must be an integer Tensor\[N, H, W\] = \[2, 64, 80\], got "
        r"torch.float32 \[2, 64, 80\]",
    ):
        model(images, segments=segments.float())
    with pytest.raises(ValueError, match=r"got torch.int64 \[64, 80\]"):
        model(images, segments=segments[0])
    negative = segments.clone()
    negative[1, 5, 7] = -1
    with pytest.raises(ValueError, match="DCL: segments must be labels >= 0, got a minimum of -1"):
        model(images, segments=negative)


def test_dcl_takes_slic_superpixels():
    segmentation = pytest.importorskip("skimage.segmentation")  # optional: the paper's superpixels
    torch.manual_seed(0)
    model = models.dcl(base_width=8).eval()
    rgb = torch.rand(1, 3, 64, 64)
    superpixels = torch.from_numpy(segmentation.slic(rgb[0].permute(1, 2, 0).numpy(), n_segments=30, start_label=0))
    with torch.no_grad():
        _, segment = model.streams(rgb, superpixels[None].long())
    for label in superpixels.unique():
        values = segment[0, 0][superpixels == label]
        assert torch.equal(values, values[:1].expand_as(values))


# ----------------------------------------------------------------------------------------------------- PoolNet


def test_poolnet_guides_every_level():
    torch.manual_seed(0)
    model = models.poolnet(width=16).eval()
    assert len(model.fams) == 4 and model.ppm_bins == (1, 3, 5)
    images = torch.randn(1, 3, 64, 64)
    out = model(images)
    # The global guidance reaches the output through every level: its fusion layer gets gradient.
    out.sum().backward()
    assert model.ppm_fuse[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- backbone weights

# torchvision's vgg16 `features` indices of its 13 convolutions, and where DCL keeps them: (stage, layer).
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
DCL_CONVS = [(0, 0), (0, 2), (1, 0), (1, 2), (2, 0), (2, 2), (2, 4), (3, 0), (3, 2), (3, 4), (4, 0), (4, 2), (4, 4)]


def _resnet_state(depth, tmp_path):
    torch.manual_seed(1)
    build = {34: torchvision.models.resnet34, 50: torchvision.models.resnet50}[depth]
    state = build(weights=None).state_dict()
    for key, value in state.items():  # batch-norm statistics other than torchvision's initial 0 and 1
        if "running" in key:
            value.copy_(torch.rand_like(value) + 0.5)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(state, path)
    return state, path


def _assert_resnet_layers_arrived(model, state, prefix):
    """Every tensor of torchvision's layer1..layer4 equals the model's `prefix`{i - 1}."""
    mine = model.state_dict()
    compared = 0
    for key, value in state.items():
        if key.startswith("layer"):
            stage, rest = key.split(".", 1)
            assert torch.equal(mine[f"{prefix}{int(stage[5:]) - 1}.{rest}"], value), key
            compared += 1
    assert compared > 100


def _assert_adapted(weight, rgb_weight, in_channels):
    """segops.models.resnet.adapt_input_weight's rule: 3 channels keep the RGB filters, 1 takes their sum (so a grey
    image gets the RGB filters' response to it repeated in R, G and B), k others the RGB filters repeated cyclically
    and scaled by 3 / k."""
    if in_channels == 3:
        assert torch.equal(weight, rgb_weight)
    elif in_channels == 1:
        torch.testing.assert_close(weight, rgb_weight.sum(1, keepdim=True))
        grey = torch.rand(1, 1, 16, 16, dtype=torch.float64)
        torch.testing.assert_close(
            F.conv2d(grey, weight.double()), F.conv2d(grey.expand(-1, 3, -1, -1), rgb_weight.double())
        )
    else:
        expected = torch.stack([rgb_weight[:, c % 3] for c in range(in_channels)], 1) * 3 / in_channels
        torch.testing.assert_close(weight, expected)


@pytest.mark.parametrize("in_channels", [3, 4])
def test_basnet_loads_resnet34_weights(tmp_path, in_channels):
    state, path = _resnet_state(34, tmp_path)
    torch.manual_seed(0)
    model = models.basnet(width=16, backbone=path, in_channels=in_channels)
    _assert_resnet_layers_arrived(model, state, "encoder.")
    # The paper's input convolution is its own (3x3, stride 1): not ResNet's 7x7, whatever in_channels.
    assert model.stem[0].weight.shape == (64, in_channels, 3, 3)
    assert torch.equal(
        models.basnet(width=16, backbone=state).encoder[3][2].conv2.weight, state["layer4.2.conv2.weight"]
    )


@pytest.mark.parametrize("in_channels", [3, 1, 4])
def test_poolnet_loads_resnet50_weights(tmp_path, in_channels):
    state, path = _resnet_state(50, tmp_path)
    model = models.poolnet(width=16, backbone=path if in_channels == 3 else state, in_channels=in_channels)
    _assert_resnet_layers_arrived(model, state, "encoder.")
    mine = model.state_dict()
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(mine[f"stem.1.{key}"], state[f"bn1.{key}"])
    _assert_adapted(model.stem[0].weight.detach(), state["conv1.weight"], in_channels)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_dcl_loads_vgg16_weights(tmp_path, in_channels):
    torch.manual_seed(1)
    state = torchvision.models.vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16_features.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)  # the classifier is not used
    model = models.dcl(backbone=path if in_channels == 3 else state, in_channels=in_channels)
    for index, (stage, layer) in zip(VGG16_CONVS, DCL_CONVS):
        conv = model.stages[stage][layer]
        assert torch.equal(conv.bias, state[f"features.{index}.bias"])
        if index > 0:
            assert torch.equal(conv.weight, state[f"features.{index}.weight"])
    _assert_adapted(model.stages[0][0].weight.detach(), state["features.0.weight"], in_channels)


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.dcl(base_width=0), "DCL: base_width must be an int >= 1, got 0"),
        (lambda: models.dcl(in_channels=0), "DCL: in_channels must be an int >= 1, got 0"),
        (lambda: models.dcl(side_channels=2.0), "DCL: side_channels must be an int >= 1, got 2.0"),
        (lambda: models.dcl(crf="post"), "DCL: crf must be a bool, got 'post'"),
        (
            lambda: models.dcl(base_width=8, backbone={}),
            "DCL: backbone .VGG16's weights. needs base_width 64, got base_width=8",
        ),
        (
            lambda: models.dcl(backbone={}),
            r"DCL: backbone must hold torchvision vgg16's state_dict \(13 convolutions "
            r"in features.\*\), got 0",
        ),
        (
            lambda: models.basnet(width=0),
            r"BASNet: width must be an int >= 1 \(or None for the paper's widths\), got 0",
        ),
        (lambda: models.basnet(in_channels=True), "BASNet: in_channels must be an int >= 1, got True"),
        (
            lambda: models.basnet(backbone=34),
            "BASNet: backbone must be None, a torchvision state_dict or the path of the file holding one, got int",
        ),
        (
            lambda: models.basnet(width=8, backbone={}),
            "BASNet: backbone must hold torchvision resnet34's state_dict, got one that does not load: Error.s. in "
            r"loading state_dict for ResNet:\s+Missing key.s. in state_dict: \"conv1.weight\"",
        ),
        (lambda: models.poolnet(width=0), "PoolNet: width must be an int >= 1, got 0"),
        (lambda: models.poolnet(in_channels=-3), "PoolNet: in_channels must be an int >= 1, got -3"),
        (
            lambda: models.poolnet(width=8, backbone=torchvision.models.resnet34().state_dict()),
            "PoolNet: backbone must hold torchvision resnet50's state_dict, got one that does not load",
        ),
        (lambda: SegmentPooling(0), "SegmentPooling: channels must be an int >= 1, got 0"),
        (
            lambda: models.dcl(base_width=8)(torch.zeros(1, 3, 64, 64, dtype=torch.int64)),
            "DCL: images must be floating point, got torch.int64",
        ),
        (
            lambda: models.poolnet(width=8)(torch.zeros(3, 64, 64)),
            r"PoolNet: images must be a Tensor\[N, 3, H, W\] "
            r"\(in_channels\), got \[3, 64, 64\]",
        ),
    ],
)
def test_saliency_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
