"""segops.models: output shapes at any input size, the papers' initialisations, segops' operators where the papers
use them, backbone weights loaded from torchvision's state_dicts, and a few training steps that learn."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import importlib

import segops
import segops.models as models
from segops.reference import flow_warp as grid_sample_flow_warp
from tolerances import assert_as_accurate_as

# The modules themselves (segops.models.segnet the attribute is the builder function).
fcn_module = importlib.import_module("segops.models.fcn")
segnet_module = importlib.import_module("segops.models.segnet")


@pytest.fixture(scope="module")
def fcn8():
    torch.manual_seed(0)
    return models.fcn8s(num_classes=5).eval()


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (100, 71)])
def test_fcn_output_size(fcn8, size):
    with torch.no_grad():
        assert fcn8(torch.randn(2, 3, *size))["out"].shape == (2, 5, *size)


def test_bilinear_upsampling_layer_equals_bilinear_interpolation():
    x = torch.randn(1, 3, 6, 7)
    for factor in (2, 8, 32):
        up = fcn_module.upsampling(3, factor)
        expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        actual = up(x)
        assert actual.shape == expected.shape
        # Equal away from the border (the transposed convolution pads with zeros, interpolation clamps).
        torch.testing.assert_close(
            actual[..., factor:-factor, factor:-factor],
            expected[..., factor:-factor, factor:-factor],
            rtol=1e-5,
            atol=1e-5,
        )


def test_skip_scores_start_at_zero_and_learn():
    """The paper zero-initialises the skip scores: FCN-8s then computes FCN-32s's coarse scores, upsampled x2,
    x2, x8 instead of x32 (equal to a hand-run of that path), and training moves the skips."""
    torch.manual_seed(2)
    model = models.fcn8s(num_classes=4).eval()
    x = torch.randn(1, 3, 96, 128)
    features = x
    for stage in model.stages:
        features = stage(features)
    coarse = model.score_fr(model.fc7(model.fc6(features)))
    up = model.upscore_pool4(model.upscore2(coarse)[..., :6, :8])[..., :12, :16]
    expected = model.upscore_final(up)[..., :96, :128]
    torch.testing.assert_close(model(x)["out"], expected)
    # Every score starts at zero: the cross-entropy's gradient (softmax - one-hot) reaches the skips at once.
    F.cross_entropy(model(x)["out"], torch.randint(0, 4, (1, 96, 128))).backward()
    assert model.score_pool3.weight.grad.abs().sum() > 0 and model.score_pool4.weight.grad.abs().sum() > 0


def test_vgg16_backbone_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = models.fcn32s(num_classes=3, backbone=path).eval()
    x = torch.randn(1, 3, 64, 96)  # a multiple of 32: ceil-mode pooling equals torchvision's floor mode
    features = x
    with torch.no_grad():
        for stage in model.stages:
            features = stage(features)
        torch.testing.assert_close(features, vgg.features(x))
        # fc6/fc7 as convolutions equal the classifier on a 7x7 pool5 (224x224 input); in float64, where sums of
        # 25,088 products in another order differ by far less than any wiring error.
        model.double(), vgg.double()
        pool5 = torch.randn(1, 512, 7, 7, dtype=torch.float64).relu()
        fc7 = model.fc7(model.fc6(pool5))[:, :, 3, 3]
        expected = vgg.classifier[:5](torch.flatten(pool5, 1))
        torch.testing.assert_close(fc7, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("build", [models.segnet, models.deconvnet], ids=["segnet", "deconvnet"])
@pytest.mark.parametrize("size", [(64, 64), (67, 99)])
def test_segnet_unpools_with_segops_to_the_input_size(monkeypatch, build, size):
    calls = []

    def counting_unpool(*args, **kwargs):
        calls.append(kwargs.get("output_size"))
        return segops_max_unpool2d(*args, **kwargs)

    segops_max_unpool2d = segnet_module.max_unpool2d
    monkeypatch.setattr(segnet_module, "max_unpool2d", counting_unpool)
    model = build(num_classes=4, base_width=8)
    out = model(torch.randn(2, 3, *size))["out"]
    assert out.shape == (2, 4, *size)
    assert len(calls) == 5 and tuple(calls[-1]) == size
    out.sum().backward()
    assert model.encoder[0][0][0].weight.grad.abs().sum() > 0


def test_segnet_paper_widths():
    model = models.segnet(num_classes=11)
    assert [stage[0][0].out_channels for stage in model.encoder] == [64, 128, 256, 512, 512]
    assert sum(p.numel() for p in model.parameters()) > 29e6  # SegNet's ~29.4M parameters


@pytest.mark.parametrize("size", [(64, 64), (65, 99)])
def test_unet_output_size(size):
    model = models.unet(num_classes=3, base_width=8)
    assert model(torch.randn(2, 3, *size))["out"].shape == (2, 3, *size)


def test_unet_paper_widths():
    model = models.unet(num_classes=2)
    assert [block[0].out_channels for block in model.down] == [64, 128, 256, 512, 1024]


def test_deconvnet_layers():
    """VGG16's encoder, fc6 (7x7) and fc7 4096 wide, a 7x7 deconvolution back, 3x3 deconvolutions mirroring the
    encoder, and a 1x1 classifier."""
    model = models.deconvnet(num_classes=21)
    assert [stage[0][0].out_channels for stage in model.encoder] == [64, 128, 256, 512, 512]
    assert model.fc6[0].kernel_size == (7, 7) and model.fc7[0].out_channels == 4096
    assert isinstance(model.deconv_fc6[0], torch.nn.ConvTranspose2d) and model.deconv_fc6[0].kernel_size == (7, 7)
    decoder_layers = [layer[0] for stage in model.decoder for layer in stage]
    assert len(decoder_layers) == 13 and all(isinstance(layer, torch.nn.ConvTranspose2d) for layer in decoder_layers)
    assert [stage[-1][0].out_channels for stage in model.decoder] == [512, 256, 128, 64, 64]
    assert model.classifier.kernel_size == (1, 1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.unet(3, base_width=8, depth=2),  # the paper's, without batch norm: shallower to learn fast
        lambda: models.segnet(3, base_width=8),
        lambda: models.deconvnet(3, base_width=8),
    ],
    ids=["unet", "segnet", "deconvnet"],
)
def test_a_few_training_steps_learn(build):
    torch.manual_seed(0)
    model = build()
    images = torch.rand(4, 3, 64, 64)
    # Labels a network can learn from the pixels: the brightest channel.
    target = images.argmax(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(images)["out"], target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize(
    "builder, name",
    [(models.fcn8s, "FCN"), (models.segnet, "SegNet"), (models.unet, "UNet"), (models.deconvnet, "DeconvNet")],
)
def test_bad_num_classes(builder, name):
    with pytest.raises(ValueError, match=f"{name}: num_classes must be an int >= 1, got 0"):
        builder(0)


# ----------------------------------------------------------------------------- DeepLab, PSPNet (dilated ResNets)


def _count_dilated(module):
    from segops import DilatedConv2d

    return sum(isinstance(m, DilatedConv2d) for m in module.modules())


# torchvision's dilation keeps a stage's first block at the previous dilation: os 8 dilates 5 of layer3's 3x3
# convolutions and all 3 of layer4's; os 16 dilates 2 of layer4's.
@pytest.mark.parametrize("output_stride, dilated", [(8, 8), (16, 2)])
def test_dilated_resnet_equals_torchvision_with_its_weights(tmp_path, output_stride, dilated):
    torch.manual_seed(3)
    reference = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, output_stride == 8, True]
    ).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = models.DilatedResNet(50, output_stride, weights=path).eval()
    assert _count_dilated(backbone) == dilated
    x = torch.randn(1, 3, 64, 80)

    def torchvision_backbone(images):
        return reference.layer4(
            reference.layer3(
                reference.layer2(
                    reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(images)))))
                )
            )
        )

    with torch.no_grad():
        expected = torchvision_backbone(x)
        actual = backbone(x)
        reference.double()
        exact = torchvision_backbone(x.double())
    assert actual.shape == (1, 2048, 64 // output_stride, 80 // output_stride)
    # Fifty float32 layers: judged by the distance from float64, against torchvision's own float32 distance.
    assert_as_accurate_as(actual, expected, exact, name="DilatedResNet")


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.deeplabv2(5, depth=50),
        lambda: models.deeplabv3(5, depth=50, output_stride=16),
        lambda: models.deeplabv3(5, depth=50, output_stride=8),
        lambda: models.pspnet(5, depth=50),
    ],
    ids=["deeplabv2", "deeplabv3-os16", "deeplabv3-os8", "pspnet"],
)
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_dilated_models_output_size(build, size):
    torch.manual_seed(0)
    model = build().eval()
    assert _count_dilated(model) > 0
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    assert {key: value.shape for key, value in outputs.items()} == {
        key: (2, 5, *size) for key in (("out", "aux") if isinstance(model, models.PSPNet) else ("out",))
    }


def test_deeplabv2_crf_post_processing_and_crf_as_rnn():
    import segops

    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 72)
    rgb = torch.rand(1, 3, 64, 72) * 255
    post = models.deeplabv2(3, depth=50, crf="post").eval()
    plain = models.deeplabv2(3, depth=50).eval()
    plain.load_state_dict(post.state_dict(), strict=False)
    with torch.no_grad():
        logits = plain(images)["out"]
        expected = segops.dense_crf(logits, rgb, **segops.DEEPLAB_V2).clamp_min(1e-12).log()
        torch.testing.assert_close(post(images, rgb)["out"], expected)
    post.train()
    assert torch.equal(post(images, rgb)["out"], plain.train()(images)["out"])  # the CRF only at evaluation
    rnn = models.deeplabv2(3, depth=50, crf="rnn")
    out = rnn(images, rgb)["out"]
    F.nll_loss(out, torch.randint(0, 3, (1, 64, 72))).backward()
    assert rnn.crf.kernel_weights.grad.abs().sum() > 0 and rnn.crf.compatibility.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: models.deeplabv2(3, crf="yes"), "crf must be None, 'post' or 'rnn'"),
        (lambda: models.DilatedResNet(34), "depth must be 50 or 101, got 34"),
        (lambda: models.deeplabv3(3, depth=50, output_stride=32), "output_stride must be 8 or 16, got 32"),
        (lambda: models.pspnet(0), "PSPNet: num_classes must be an int >= 1, got 0"),
    ],
)
def test_dilated_model_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ------------------------------------------------------------------------------- the papers' structures and counts


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "build, published",
    [
        (lambda: models.fcn8s(21), 134.5e6),  # Long et al. 2015 (PASCAL VOC's 21 classes)
        (lambda: models.segnet(11), 29.5e6),  # Badrinarayanan et al. 2017 (CamVid's 11 classes)
        (lambda: models.deconvnet(21), 251.8e6),  # Noh et al. 2015
        (lambda: models.unet(2), 31.0e6),  # Ronneberger et al. 2015 (2 classes), as commonly counted
    ],
    ids=["fcn8s", "segnet", "deconvnet", "unet"],
)
def test_published_parameter_counts(build, published):
    assert abs(_parameters(build()) - published) <= 0.015 * published


def test_fcn_final_upsampling_is_fixed_bilinear_and_scores_start_at_zero():
    """The paper learns the 2x upsamplings and fixes the last one to bilinear: FCN-32s's 64x64 upsampling kernel
    (21 x 21 x 64 x 64 weights, 1.8M) is no parameter; score_fr starts at zero like the skip scores."""
    model = models.fcn32s(21)
    assert not list(model.upscore_final.parameters())
    # FCN-8s adds two skip scores (512 + 256 inputs) and two learned 2x upsamplings (4x4 kernels) to FCN-32s.
    skips, upsamplings = (512 + 1) * 21 + (256 + 1) * 21, 2 * 21 * 21 * 4 * 4
    assert _parameters(model) == _parameters(models.fcn8s(21)) - skips - upsamplings
    assert model.score_fr.weight.abs().sum() == 0 and model.score_fr.bias.abs().sum() == 0
    x = torch.randn(1, 3, 5, 6)
    up = fcn_module.FixedBilinearUpsampling(3, 8)(x)
    expected = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 8:-8, 8:-8], expected[..., 8:-8, 8:-8], rtol=1e-5, atol=1e-5)


def test_fcn_staged_training_starts_from_the_coarser_net():
    torch.manual_seed(0)
    fcn32 = models.fcn32s(4, base_width=8)
    with torch.no_grad():
        for parameter in fcn32.parameters():
            parameter.normal_()
    fcn16 = models.fcn16s(4, base_width=8).from_coarser(fcn32)
    for name, parameter in fcn32.named_parameters():
        assert torch.equal(dict(fcn16.named_parameters())[name], parameter), name
    assert fcn16.score_pool4.weight.abs().sum() == 0
    fcn8 = models.fcn8s(4, base_width=8).from_coarser(fcn16)
    assert torch.equal(fcn8.upscore2.weight, fcn16.upscore2.weight) and fcn8.score_pool3.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="FCN.from_coarser: coarser must have a larger stride than 16, got stride 8"):
        fcn16.from_coarser(fcn8)


@pytest.mark.parametrize(
    "output_stride, multi_grid, dilations",
    [(16, (1, 2, 4), (2, 4, 8)), (8, (1, 2, 4), (4, 8, 16)), (16, (1, 1, 1), (2, 2, 2))],
)
def test_deeplabv3_multi_grid_and_head_as_the_paper(output_stride, multi_grid, dilations):
    model = models.deeplabv3(3, depth=50, output_stride=output_stride, multi_grid=multi_grid)
    layer4 = model.backbone.layer4
    assert tuple(block.conv2.dilation[0] for block in layer4) == dilations
    assert tuple(block.conv2.padding[0] for block in layer4) == dilations
    # ASPP (its own 1x1 projection to 256) and the final 1x1 classifier: no 3x3 convolution between.
    assert [type(m).__name__ for m in model.head] == ["ASPP", "Conv2d"] and model.head[1].kernel_size == (1, 1)


def test_pspnet_auxiliary_branch_and_deep_stem_as_the_paper(tmp_path):
    torch.manual_seed(0)
    model = models.pspnet(4, depth=50)
    stem = [m for m in model.backbone.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 64, (3, 3), (2, 2)),
        (64, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]
    assert model.aux_classifier[0].in_channels == 1024  # block 3 (res4b22)
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    outputs = model(images)
    loss = segops.losses.segmentation_loss(outputs, target)
    expected = F.cross_entropy(outputs["out"], target) + 0.4 * F.cross_entropy(outputs["aux"], target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.aux_classifier[0].weight.grad.abs().sum() > 0
    assert set(models.pspnet(4, depth=50, aux=False)(images)) == {"out"}
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="deep_stem=True has no torchvision weights"):
        models.pspnet(4, depth=50, backbone=path)
    plain = models.pspnet(4, depth=50, backbone=path, deep_stem=False)
    assert torch.equal(plain.backbone.conv1.weight, torch.load(path)["conv1.weight"])


@pytest.mark.parametrize(
    "build",
    [
        lambda c: models.fcn8s(3, base_width=8, in_channels=c),
        lambda c: models.segnet(3, base_width=8, in_channels=c),
        lambda c: models.deconvnet(3, base_width=8, in_channels=c),
        lambda c: models.unet(3, base_width=8, depth=2, in_channels=c),
        lambda c: models.deeplabv2(3, depth=50, in_channels=c),
        lambda c: models.deeplabv3(3, depth=50, in_channels=c),
        lambda c: models.pspnet(3, depth=50, in_channels=c),
    ],
    ids=["fcn8s", "segnet", "deconvnet", "unet", "deeplabv2", "deeplabv3", "pspnet"],
)
@pytest.mark.parametrize("channels", [1, 4])
def test_in_channels(build, channels):
    """Grayscale (U-Net's own microscopy) and RGB-D inputs."""
    model = build(channels).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, 64, 64))["out"].shape == (2, 3, 64, 64)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 64, 64))  # an RGB image is not what it was built for


def test_cam_and_ucn_in_channels():
    with torch.no_grad():
        assert models.cam(3, in_channels=1).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 3)
        assert models.ucn(8, base_width=8, in_channels=4).eval()(torch.randn(1, 4, 32, 32)).shape == (1, 8, 32, 32)


def test_pretrained_first_convolution_adapted_to_in_channels(tmp_path):
    """One channel: the RGB filters summed; k channels: repeated cyclically, scaled by 3 / k. So a gray image
    repeated over the channels gives the RGB network's response."""
    torch.manual_seed(0)
    vgg_path, resnet_path = tmp_path / "vgg16.pth", tmp_path / "resnet50.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), vgg_path)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), resnet_path)
    rgb = torch.load(vgg_path)["features.0.weight"]
    gray = models.fcn32s(3, backbone=vgg_path, in_channels=1)
    torch.testing.assert_close(gray.stages[0][0].weight, rgb.sum(1, keepdim=True))
    rgbd = models.deeplabv3(3, depth=50, backbone=resnet_path, in_channels=4)
    resnet_rgb = torch.load(resnet_path)["conv1.weight"]
    expected = torch.stack([resnet_rgb[:, 0], resnet_rgb[:, 1], resnet_rgb[:, 2], resnet_rgb[:, 0]], 1) * 0.75
    torch.testing.assert_close(rgbd.backbone.conv1.weight, expected)
    image = torch.randn(1, 1, 32, 32)
    reference = torch.nn.functional.conv2d(image.expand(-1, 3, -1, -1), rgb, padding=1)
    torch.testing.assert_close(torch.nn.functional.conv2d(image, gray.stages[0][0].weight, padding=1), reference)


def test_segnet_encoder_from_torchvision_vgg16_bn(tmp_path):
    """The encoder loaded from vgg16_bn computes vgg16_bn's features in eval mode (its conv biases folded into the
    batch norms' running means), in float64."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn(weights=None)
    with torch.no_grad():  # statistics and biases away from their defaults, so that a wrong fold would show
        for m in vgg.features.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(vgg.state_dict(), path)
    for build in (models.segnet, models.deconvnet):
        model = build(5, backbone=path).double().eval()
        reference = vgg.double().eval().features
        x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        with torch.no_grad():
            ours = x
            for stage in model.encoder:
                ours = F.max_pool2d(stage(ours), 2, 2)
            # The fold rounds mean - bias to float32 (the state's dtype): a shift of about 2e-7 per channel,
            # carried through 13 layers.
            torch.testing.assert_close(ours, reference(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="load_vgg16_bn_encoder: expected torchvision's vgg16_bn"):
        models.segnet(5, base_width=8, backbone=path)


def test_unet_as_the_paper_without_batch_norm():
    plain, normed = models.unet(2, base_width=8), models.unet(2, base_width=8, batch_norm=True)
    assert not [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len([m for m in normed.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 2 * 9


def test_crf_as_rnn_as_zheng_et_al():
    """FCN-8s + the CRF with the paper's bandwidths; trained end to end (the CRF's parameters get gradients); 5
    mean-field steps in training and 10 at test, each equal to segops.dense_crf with those steps."""
    torch.manual_seed(0)
    model = models.crfasrnn(3, base_width=8)
    crf = model.crf
    assert (crf.appearance_sxy, crf.appearance_srgb, crf.smoothness_sxy) == (160.0, 3.0, 3.0)
    assert crf.kernel_weights.tolist() == [3.0, 5.0] and crf.test_iters == 10  # smoothness, appearance
    with torch.no_grad():
        model.fcn.score_fr.weight.normal_()  # away from the zero initialisation, so the CRF has scores to refine
    images, rgb = torch.randn(1, 3, 64, 64), torch.rand(1, 3, 64, 64) * 255
    for training, steps in ((True, 5), (False, 10)):
        model.train(training)
        with torch.no_grad():
            torch.manual_seed(1)  # the same dropout masks in training
            logits = model.fcn(images)["out"]
            expected = segops.dense_crf(
                logits,
                rgb,
                steps,
                smoothness_sxy=3.0,
                smoothness_weight=crf.kernel_weights[0],
                appearance_sxy=160.0,
                appearance_srgb=3.0,
                appearance_weight=crf.kernel_weights[1],
                compatibility=crf.compatibility,
            )
            torch.manual_seed(1)
            torch.testing.assert_close(model(images, rgb)["out"], expected.clamp_min(1e-12).log())
    model.train()
    F.nll_loss(model(images, rgb)["out"], torch.randint(0, 3, (1, 64, 64))).backward()
    assert crf.kernel_weights.grad.abs().sum() > 0 and crf.compatibility.grad.abs().sum() > 0
    assert model.fcn.score_fr.weight.grad.abs().sum() > 0


def test_dff_reduction_is_dilated_6_on_segops():
    model = models.deep_feature_flow(3, depth=50, feature_channels=32)
    reduce = model.feature_net[1]
    assert isinstance(reduce, segops.DilatedConv2d)
    assert reduce.dilation == (6, 6) and reduce.padding == (6, 6) and reduce.kernel_size == (3, 3)


# ------------------------------------------------------------------------------------------------- R-CNN heads


def test_mask_and_box_heads_pool_with_segops():
    import segops

    torch.manual_seed(0)
    features = torch.randn(2, 16, 40, 48)
    boxes = torch.tensor([[0, 8.0, 8.0, 100.0, 90.0], [1, 20.0, 30.0, 60.0, 150.0], [1, 0.0, 0.0, 190.0, 150.0]])
    mask_head = models.MaskRCNNMaskHead(16, num_classes=3, spatial_scale=0.25)
    masks = mask_head(features, boxes)
    assert masks.shape == (3, 3, 28, 28)
    expected = segops.roi_align(features, boxes, 14, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(mask_head.pool(features, boxes), expected)
    box_head = models.FastRCNNBoxHead(16, num_classes=4, spatial_scale=0.25)
    scores, deltas = box_head(features, boxes)
    assert scores.shape == (3, 4) and deltas.shape == (3, 16)
    torch.testing.assert_close(box_head.pool(features, boxes), segops.roi_pool(features, boxes, 7, 0.25))
    (masks.sum() + scores.sum()).backward()
    assert mask_head.convs[0].weight.grad.abs().sum() > 0 and box_head.fc6.weight.grad.abs().sum() > 0


def test_torchvision_mask_rcnn_on_segops_roi_align_equals_torchvision():
    import copy

    from segops.models.rcnn import SegopsRoIHeads

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=160, box_score_thresh=0.0
    ).eval()
    stock = copy.deepcopy(model)
    images = [torch.rand(3, 120, 150)]
    with torch.no_grad():
        expected = model(images)[0]
        models.use_segops_roi_align(model)
        assert isinstance(model.roi_heads.box_roi_pool, models.SegopsMultiScaleRoIAlign)
        assert isinstance(model.roi_heads.mask_roi_pool, models.SegopsMultiScaleRoIAlign)
        assert isinstance(model.roi_heads, SegopsRoIHeads)  # mask targets cropped by segops.roi_align
        actual = model(images)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4)
    # Training: the same losses (the same proposals sampled; pooled features within the tolerance above).
    masks = torch.zeros(1, 120, 150, dtype=torch.uint8)
    masks[0, 20:100, 10:80] = 1
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]), "labels": torch.tensor([1]), "masks": masks}]
    with torch.no_grad():
        torch.manual_seed(1)
        expected_losses = stock.train()(images, targets)
        torch.manual_seed(1)
        actual_losses = model.train()(images, targets)
    assert set(actual_losses) == set(expected_losses) and expected_losses["loss_mask"] > 0
    for key in expected_losses:
        torch.testing.assert_close(actual_losses[key], expected_losses[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("builder", ["deeplabv3_resnet50", "fcn_resnet50"])
def test_torchvision_segmentation_models_on_segops_dilated_conv_equal_stock(builder):
    """use_segops_dilated_conv swaps every dilated convolution (the dilated layer3/layer4 and, in DeepLabV3, ASPP)
    for a DilatedConv2d sharing its parameters: outputs and every parameter's gradient equal stock. In float64,
    where the two differ only in the order of their sums (segops' im2col + GEMM against oneDNN's direct
    convolution): each layer within a few thousand terms' rounding (about 1e-12 relatively), far below 1e-8 after
    the network's ~60 layers."""
    torch.manual_seed(0)
    build = getattr(torchvision.models.segmentation, builder)
    stock = build(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).double()
    swapped = build(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).double()
    swapped.load_state_dict(stock.state_dict())
    dilated = [m for m in stock.modules() if isinstance(m, torch.nn.Conv2d) and max(m.dilation) > 1]
    assert models.use_segops_dilated_conv(swapped) is swapped
    converted = [m for m in swapped.modules() if isinstance(m, segops.DilatedConv2d)]
    assert len(converted) == len(dilated) >= 6
    assert not [m for m in swapped.modules() if isinstance(m, torch.nn.Conv2d) and max(m.dilation) > 1]
    images = torch.rand(2, 3, 65, 57, dtype=torch.float64)
    tolerance = dict(rtol=1e-8, atol=1e-8)
    for model in (stock, swapped):
        model.eval()
    with torch.no_grad():
        expected, actual = stock(images), swapped(images)
    assert set(actual) == set(expected) == {"out", "aux"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], **tolerance)
    grads = []
    for model in (stock, swapped):
        model.train()
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        output = model(images)
        (output["out"].square().mean() + output["aux"].square().mean()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, expected_grad in grads[0].items():
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(grads[1][name], expected_grad, rtol=1e-7, atol=1e-8 * scale, msg=name)


def test_use_segops_dilated_conv_names_a_module_it_cannot_convert():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2))
    model[1].padding_mode = "circular"
    with pytest.raises(ValueError, match="use_segops_dilated_conv: module '1': DilatedConv2d.from_conv: needs"):
        models.use_segops_dilated_conv(model)


# ------------------------------------------------------------------------------------------- Deep Feature Flow


@pytest.fixture(scope="module")
def dff():
    torch.manual_seed(0)
    model = models.deep_feature_flow(4, depth=50, key_interval=3, feature_channels=32).eval()
    # Away from the initialisation (flow 0, scale 1), so that propagation moves features.
    with torch.no_grad():
        model.flow_net.predict_flow.weight.normal_(0, 2.0)  # flows of about a feature-map pixel
        model.flow_net.predict_scale.weight.normal_(0, 0.05)
    return model


def _per_frame(model, frame):
    return F.interpolate(
        model.task_head(model.feature_net(frame)), size=frame.shape[-2:], mode="bilinear", align_corners=False
    )


def test_dff_key_frame_every_frame_equals_per_frame_inference(dff):
    frames = torch.randn(2, 4, 3, 64, 80)
    dff.scheduler = models.FixedIntervalScheduler(1)
    try:
        with torch.no_grad():
            actual = dff(frames)
            expected = torch.stack([_per_frame(dff, frames[:, t]) for t in range(4)], dim=1)
    finally:
        dff.scheduler = models.FixedIntervalScheduler(3)
    assert actual.shape == (2, 4, 4, 64, 80)
    assert torch.equal(actual, expected)


def test_dff_propagates_key_frame_features_along_the_flow(dff):
    """Interval 3 over 5 frames: frames 0 and 3 are key frames (per-frame inference); 1, 2 and 4 take their key
    frame's features warped by the flow network's flow and scale (checked on F.grid_sample)."""
    torch.manual_seed(1)
    frames = torch.randn(1, 5, 3, 64, 64)
    with torch.no_grad():
        actual = dff(frames)
        for t in range(5):
            key = frames[:, t - t % 3]
            if t % 3 == 0:
                expected = _per_frame(dff, key)
            else:
                flow, scale = dff.flow_net(frames[:, t], key)
                assert flow.abs().max() > 0.5 and flow.shape[-2:] == (4, 4)
                features = grid_sample_flow_warp(dff.feature_net(key), flow, scale)
                expected = F.interpolate(dff.task_head(features), size=(64, 64), mode="bilinear", align_corners=False)
            torch.testing.assert_close(actual[:, t], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(actual[:, 1], _per_frame(dff, frames[:, 1]), atol=1e-3)


def test_dff_untrained_flow_network_copies_the_key_frame_features():
    torch.manual_seed(0)
    model = models.deep_feature_flow(3, depth=50, key_interval=10, feature_channels=16).eval()
    frames = torch.randn(1, 3, 3, 65, 97)
    with torch.no_grad():
        out = model(frames)
    assert out.shape == (1, 3, 3, 65, 97)
    assert torch.equal(out[:, 1], out[:, 0]) and torch.equal(out[:, 2], out[:, 0])


def test_dff_training_pair_reaches_every_network_and_resizes_flow(dff):
    torch.manual_seed(2)
    model = models.DeepFeatureFlow(
        torch.nn.Conv2d(3, 8, 3, stride=8, padding=1), torch.nn.Conv2d(8, 2, 1), models.FlowNet(8, width=8), scheduler=2
    )
    with torch.no_grad():
        model.flow_net.predict_flow.weight.normal_(0, 1.0)
    frame, key = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    # The feature map (8x8) is finer than the flow network's (4x4): flow resized, its values doubled.
    flow, scale = model.flow_net(frame, key)
    features = model.feature_net(key)
    factors = torch.tensor([2.0, 2.0]).view(1, 2, 1, 1)
    resized_flow = F.interpolate(flow, size=(8, 8), mode="bilinear", align_corners=False) * factors
    resized_scale = F.interpolate(scale, size=(8, 8), mode="bilinear", align_corners=False)
    expected = grid_sample_flow_warp(features, resized_flow, resized_scale)
    torch.testing.assert_close(model.propagate(features, key, frame), expected, rtol=1e-5, atol=1e-5)
    F.cross_entropy(model.forward_pair(frame, key), torch.randint(0, 2, (2, 64, 64))).backward()
    for net in (
        model.feature_net,
        model.task_head,
        model.flow_net.encoder,
        model.flow_net.predict_flow,
        model.flow_net.predict_scale,
    ):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.deep_feature_flow(0), "deep_feature_flow: num_classes must be an int >= 1, got 0"),
        (lambda: models.FixedIntervalScheduler(0), "interval must be an int >= 1, got 0"),
        (
            lambda: models.deep_feature_flow(3, depth=50, feature_channels=8)(torch.randn(1, 3, 64, 64)),
            r"frames must have shape \[N, T, 3, H, W\], got \[1, 3, 64, 64\]",
        ),
        (
            lambda: next(models.deep_feature_flow(3, depth=50, feature_channels=8).stream([torch.randn(1, 1, 64, 64)])),
            r"frame 0 must have shape \[N, 3, H, W\], got \[1, 1, 64, 64\]",
        ),
    ],
)
def test_dff_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
