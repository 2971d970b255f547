"""segops.models: output shapes at any input size, the papers' initialisations, segops' operators where the papers
use them, backbone weights loaded from torchvision's state_dicts, and a few training steps that learn."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import importlib

import segops.models as models

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
        assert fcn8(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_bilinear_upsampling_layer_equals_bilinear_interpolation():
    x = torch.randn(1, 3, 6, 7)
    for factor in (2, 8, 32):
        up = fcn_module.upsampling(3, factor)
        expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        actual = up(x)
        assert actual.shape == expected.shape
        # Equal away from the border (the transposed convolution pads with zeros, interpolation clamps).
        torch.testing.assert_close(actual[..., factor:-factor, factor:-factor],
                                   expected[..., factor:-factor, factor:-factor], rtol=1e-5, atol=1e-5)


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
    torch.testing.assert_close(model(x), expected)
    model(x).square().mean().backward()
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
        # fc6/fc7 as convolutions equal the classifier on a 7x7 pool5 (224x224 input).
        big = torch.randn(1, 3, 224, 224)
        pool5 = vgg.features(big)
        fc7 = model.fc7(model.fc6(pool5))[:, :, 3, 3]
        expected = vgg.classifier[:5](torch.flatten(pool5, 1))
        torch.testing.assert_close(fc7, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (67, 99)])
def test_segnet_unpools_with_segops_to_the_input_size(monkeypatch, size):
    calls = []

    def counting_unpool(*args, **kwargs):
        calls.append(kwargs.get("output_size"))
        return segops_max_unpool2d(*args, **kwargs)

    segops_max_unpool2d = segnet_module.max_unpool2d
    monkeypatch.setattr(segnet_module, "max_unpool2d", counting_unpool)
    model = models.segnet(num_classes=4, base_width=8)
    out = model(torch.randn(2, 3, *size))
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
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_unet_paper_widths():
    model = models.unet(num_classes=2)
    assert [block[0].out_channels for block in model.down] == [64, 128, 256, 512, 1024]


@pytest.mark.parametrize("build", [lambda: models.unet(3, base_width=8), lambda: models.segnet(3, base_width=8)],
                         ids=["unet", "segnet"])
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
        loss = F.cross_entropy(model(images), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("builder, name", [(models.fcn8s, "FCN"), (models.segnet, "SegNet"), (models.unet, "UNet")])
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
    reference = torchvision.models.resnet50(weights=None,
                                            replace_stride_with_dilation=[False, output_stride == 8, True]).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = models.DilatedResNet(50, output_stride, weights=path).eval()
    assert _count_dilated(backbone) == dilated
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        actual = backbone(x)
    assert actual.shape == (1, 2048, 64 // output_stride, 80 // output_stride)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [
    lambda: models.deeplabv2(5, depth=50),
    lambda: models.deeplabv3(5, depth=50, output_stride=16),
    lambda: models.deeplabv3(5, depth=50, output_stride=8),
    lambda: models.pspnet(5, depth=50),
], ids=["deeplabv2", "deeplabv3-os16", "deeplabv3-os8", "pspnet"])
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_dilated_models_output_size(build, size):
    torch.manual_seed(0)
    model = build().eval()
    assert _count_dilated(model) > 0
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_deeplabv2_crf_post_processing_and_crf_as_rnn():
    import segops

    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 72)
    rgb = torch.rand(1, 3, 64, 72) * 255
    post = models.deeplabv2(3, depth=50, crf="post").eval()
    plain = models.deeplabv2(3, depth=50).eval()
    plain.load_state_dict(post.state_dict(), strict=False)
    with torch.no_grad():
        logits = plain(images)
        expected = segops.dense_crf(logits, rgb, **segops.DEEPLAB_V2).clamp_min(1e-12).log()
        torch.testing.assert_close(post(images, rgb), expected)
    post.train()
    assert torch.equal(post(images, rgb), plain.train()(images))  # the CRF only at evaluation
    rnn = models.deeplabv2(3, depth=50, crf="rnn")
    out = rnn(images, rgb)
    F.nll_loss(out, torch.randint(0, 3, (1, 64, 72))).backward()
    assert rnn.crf.kernel_weights.grad.abs().sum() > 0 and rnn.crf.compatibility.grad.abs().sum() > 0


@pytest.mark.parametrize("build, message", [
    (lambda: models.deeplabv2(3, crf="yes"), "crf must be None, 'post' or 'rnn'"),
    (lambda: models.DilatedResNet(34), "depth must be 50 or 101, got 34"),
    (lambda: models.deeplabv3(3, depth=50, output_stride=32), "output_stride must be 8 or 16, got 32"),
    (lambda: models.pspnet(0), "PSPNet: num_classes must be an int >= 1, got 0"),
])
def test_dilated_model_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


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
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                               min_size=128, max_size=160,
                                                               box_score_thresh=0.0).eval()
    images = [torch.rand(3, 120, 150)]
    with torch.no_grad():
        expected = model(images)[0]
        models.use_segops_roi_align(model)
        assert isinstance(model.roi_heads.box_roi_pool, models.SegopsMultiScaleRoIAlign)
        assert isinstance(model.roi_heads.mask_roi_pool, models.SegopsMultiScaleRoIAlign)
        actual = model(images)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4)
