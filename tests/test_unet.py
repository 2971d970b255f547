"""U-Net with the paper's unpadded ("valid") convolutions and its overlap-tile inference (Ronneberger et al. 2015,
figures 1 and 2): the paper's sizes, the tiled result against one pass of the network over the whole mirrored
image, the mirroring against F.pad's "reflect", and the errors."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import segops.models as models

# The module (segops.models.unet the attribute is the builder function).
unet_module = importlib.import_module("segops.models.unet")

MARGIN = 92  # (572 - 388) / 2: the depth-4 network's receptive field reaches 92 pixels beyond each output pixel


def _double_conv(c_in, c_out):
    """Parameters of two 3x3 convolutions with biases, c_in -> c_out -> c_out."""
    return 9 * c_in * c_out + c_out + 9 * c_out * c_out + c_out


def test_valid_sizes_and_output_as_the_papers_figure_1():
    sizes = models.unet_valid_sizes()  # depth 4
    assert (572, 388) in sizes
    # Every 16th input (four 2x2 pools: each needs an even map), from the smallest with an output (4 pixels).
    assert sizes[:3] == [(188, 4), (204, 20), (220, 36)]
    assert all(b[0] - a[0] == 16 for a, b in zip(sizes, sizes[1:]))
    assert all(size - output == 2 * MARGIN for size, output in sizes)
    assert models.unet_valid_sizes(depth=2, max_input_size=60) == [(44, 4), (48, 8), (52, 12), (56, 16), (60, 20)]
    # The network itself: 572x572 -> 388x388 (narrow: the sizes do not depend on the widths).
    model = models.unet(2, base_width=4, in_channels=1, padding="valid").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 572, 572))["out"].shape == (1, 2, 388, 388)
        assert model(torch.rand(1, 1, 188, 204))["out"].shape == (1, 2, 4, 20)


def test_valid_padding_keeps_the_parameters():
    """Padding has no parameters: 31,031,810 either way, the usual 31.0M. The paper's widths 64 ... 1024, counted
    by hand: the contracting path's double convolutions (3 -> 64, 64 -> 128, ..., 512 -> 1024), the 2x2
    up-convolutions (1024 -> 512, ..., 128 -> 64), the expanding path's double convolutions on the concatenations
    (1024 -> 512, ..., 128 -> 64) and the 1x1 classifier to 2 classes."""
    widths = [64, 128, 256, 512, 1024]
    down = _double_conv(3, 64) + sum(_double_conv(a, b) for a, b in zip(widths, widths[1:]))
    up = sum(4 * b * a + a for a, b in zip(widths, widths[1:]))
    merge = sum(_double_conv(2 * a, a) for a in widths[:-1])
    expected = down + up + merge + 64 * 2 + 2
    assert expected == 31_031_810
    for padding in ("same", "valid"):
        assert sum(p.numel() for p in models.unet(2, padding=padding).parameters()) == expected


def test_valid_skip_connections_center_crop():
    """The paper crops the copied maps to the up-convolved ones' size around their center: at depth 1 on a 20x22
    input, the copied 16x18 map is cropped by 4 pixels per side to the up-convolved 8x10 one."""
    torch.manual_seed(0)
    model = models.unet(2, base_width=2, depth=1, in_channels=1, padding="valid").double().eval()
    x = torch.randn(1, 1, 20, 22, dtype=torch.float64)
    with torch.no_grad():
        copied = model.down[0](x)
        up = model.up[0](model.down[1](F.max_pool2d(copied, 2)))
        assert copied.shape[-2:] == (16, 18) and up.shape[-2:] == (8, 10)
        expected = model.classifier(model.merge[0](torch.cat([copied[..., 4:12, 4:14], up], dim=1)))
        assert torch.equal(model(x)["out"], expected)


@pytest.fixture(scope="module")
def valid_unet():
    """The paper's four pools, narrow and in float64, so that tiles and one pass agree to rounding."""
    torch.manual_seed(0)
    return models.unet(3, base_width=2, in_channels=1, padding="valid").double().eval()


@pytest.mark.parametrize(
    "size, tile",
    [
        ((1, 100, 116), 52),  # valid output sizes (4 + 16k), neither a multiple of the tile (nor of its step, 48)
        ((2, 150, 130), 100),  # sizes no single pass yields: the reference mirrors further and crops
        ((2, 150, 130), 388),  # one tile, the paper's, its input mirrored several times over
    ],
)
def test_tile_inference_equals_one_pass_over_the_mirrored_image(valid_unet, size, tile):
    batch, height, width = size
    torch.manual_seed(1)
    images = torch.randn(batch, 1, height, width, dtype=torch.float64)
    # One pass over the image mirrored by the margin, and beyond it on the bottom and right to the next input size
    # the network takes; F.pad's "reflect" is the paper's mirroring (the edge pixel not repeated).
    output_sizes = [output for _, output in models.unet_valid_sizes(4, 1024)]
    extra = [next(o for o in output_sizes if o >= n) - n for n in (height, width)]
    mirrored = F.pad(images, (MARGIN, MARGIN + extra[1], MARGIN, MARGIN + extra[0]), mode="reflect")
    with torch.no_grad():
        expected = valid_unet(mirrored)["out"][..., :height, :width]
        actual = models.unet_tile_inference(valid_unet, images, tile=tile)
        assert actual.shape == (batch, 3, height, width)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_tiles_step_by_multiples_of_the_pooling(valid_unet):
    """Why the tiles step by a multiple of 16 (384 for the paper's 388): the network is equivariant to shifts of
    its input by multiples of 2**depth only. A tile 16 pixels down gives the one pass's rows 16 on; 4 pixels down
    (388 mod 16), different values."""
    torch.manual_seed(2)
    image = torch.randn(1, 1, 236, 220, dtype=torch.float64)
    with torch.no_grad():
        whole = valid_unet(image)["out"]  # 52 x 36
        for shift, equal in ((16, True), (4, False)):
            tile = valid_unet(image[..., shift : shift + 220, :])["out"]  # 36 x 36
            assert torch.allclose(tile, whole[..., shift : shift + 36, :], rtol=1e-12, atol=1e-12) == equal


def test_mirror_padding_is_reflect_without_repeating_the_edge():
    mirror = unet_module._mirror_pad
    ramp = torch.arange(4.0).view(1, 1, 1, 4)
    assert mirror(ramp, 0, 0, 2, 2).flatten().tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 9)
    for top, bottom, left, right in ((3, 6, 8, 1), (0, 0, 0, 0), (6, 2, 5, 8)):
        expected = F.pad(x, (left, right, top, bottom), mode="reflect")
        assert torch.equal(mirror(x, top, bottom, left, right), expected)
    # Past the image (F.pad refuses), the mirroring goes on: the edges reflect again, period 2 (size - 1).
    short = torch.arange(3.0).view(1, 1, 1, 3)
    assert mirror(short, 0, 0, 5, 5).flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]
    assert mirror(torch.ones(1, 1, 1, 1), 2, 1, 0, 3).shape == (1, 1, 4, 4)


def test_tile_inference_on_an_image_smaller_than_the_margin(valid_unet):
    images = torch.randn(1, 1, 5, 30, dtype=torch.float64)
    with torch.no_grad():
        assert models.unet_tile_inference(valid_unet, images, tile=20).shape == (1, 3, 5, 30)


@pytest.mark.parametrize(
    "tile, message",
    [
        (390, "e.g. 388 or 404, got 390"),
        (4, "e.g. 20, got 4"),  # an output size, but smaller than one step of 16
        (36.0, "got 36.0"),
        (True, "got True"),
    ],
)
def test_invalid_tile_size(valid_unet, tile, message):
    expected = r"unet_tile_inference: tile must be an output size of unet_valid_sizes\(4\) of at least 16"
    with pytest.raises(ValueError, match=expected + r".*" + message):
        models.unet_tile_inference(valid_unet, torch.zeros(1, 1, 8, 8, dtype=torch.float64), tile=tile)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: models.unet_tile_inference(models.unet(2, base_width=2), torch.zeros(1, 3, 8, 8)),
            "unet_tile_inference: model must be a UNet with padding='valid', got padding='same'",
        ),
        (
            lambda: models.unet_tile_inference(models.unet(2, 2, padding="valid"), torch.zeros(3, 8, 8)),
            r"unet_tile_inference: images must have shape \[N, C, H, W\], got \[3, 8, 8\]",
        ),
        (
            lambda: models.unet(2, base_width=2, padding="valid")(torch.zeros(1, 3, 572, 570)),
            r"UNet: with padding='valid' and depth 4, the images' width must be an input size of "
            r"unet_valid_sizes\(4\), e.g. 556 or 572, got 570",
        ),
        (lambda: models.unet(2, padding="full"), "UNet: padding must be 'same' or 'valid', got 'full'"),
        (lambda: models.unet(2, depth=-1), "UNet: depth must be an int >= 0, got -1"),
        (lambda: models.unet_valid_sizes(depth=1.5), "unet_valid_sizes: depth must be an int >= 0, got 1.5"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
