"""segops.pooling against PyTorch's poolings and the formulas written out, and the CAM classifier (segops.models.cam):
its maps average to its logits, and after training on image labels alone they point at the objects."""

import math

import pytest
import torch
import torch.nn.functional as F

import segops.models as models
from segops.pooling import class_activation_maps, global_avg_pool, global_max_pool, lse_pool


@pytest.fixture
def maps():
    return torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))


def test_global_poolings_equal_pytorchs(maps):
    torch.testing.assert_close(global_avg_pool(maps), F.adaptive_avg_pool2d(maps, 1).flatten(1))
    torch.testing.assert_close(global_max_pool(maps), F.adaptive_max_pool2d(maps, 1).flatten(1))


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_lse_pool_equals_its_formula(maps, beta):
    x = maps.double()
    expected = torch.log(torch.exp(beta * x).mean(dim=(2, 3))) / beta
    torch.testing.assert_close(lse_pool(x, beta), expected, rtol=1e-12, atol=1e-12)


def test_lse_pool_tends_to_max_and_mean_without_overflow(maps):
    positions = maps.shape[2] * maps.shape[3]
    huge = maps * 1e4  # exp(beta * x) overflows float32 long before this
    for beta in (1e2, 1e4, 1e8):
        pooled = lse_pool(huge, beta)
        assert torch.isfinite(pooled).all()
        # mean(exp(beta x)) lies between exp(beta max) / positions and exp(beta max).
        peak = global_max_pool(huge)
        assert (pooled <= peak).all() and (pooled >= peak - math.log(positions) / beta - 1e-3).all()
    torch.testing.assert_close(lse_pool(huge, 1e8), global_max_pool(huge))
    # Small beta: the mean, where log(mean(exp(beta x))) would round to log(1) = 0 and return the max.
    for beta in (1e-6, 1e-9):
        torch.testing.assert_close(lse_pool(maps, beta), global_avg_pool(maps), rtol=1e-5, atol=1e-5)


def test_lse_pool_grows_with_beta(maps):
    pooled = [lse_pool(maps, beta) for beta in (0.01, 0.1, 1.0, 10.0, 100.0)]
    for low, high in zip(pooled, pooled[1:]):
        assert (low <= high + 1e-6).all()


def test_lse_pool_gradients():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lse_pool, (x, beta))
    assert torch.autograd.gradcheck(lambda x: lse_pool(x, 50.0), (x,))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: lse_pool(torch.randn(2, 3, 4, 4), 0.0), "lse_pool: beta must be a finite number > 0, got 0.0"),
        (lambda: lse_pool(torch.randn(2, 3, 4, 4), -1.0), "beta must be a finite number > 0, got -1.0"),
        (lambda: lse_pool(torch.randn(2, 3, 4, 4), float("inf")), "beta must be a finite number > 0, got inf"),
        (lambda: lse_pool(torch.randn(2, 3, 4, 4), torch.ones(2)), "beta must be a finite number > 0"),
        (
            lambda: global_max_pool(torch.randn(3, 4, 4)),
            r"global_max_pool: x must be a floating-point Tensor\[N, C, H, W\], "
            r"got torch.float32 \[3, 4, 4\]",
        ),
        (lambda: global_avg_pool(torch.ones(1, 2, 3, 3, dtype=torch.int64)), "got torch.int64"),
        (lambda: global_avg_pool(torch.randn(1, 2, 0, 3)), r"at least one position to pool, got shape \[1, 2, 0, 3\]"),
        (
            lambda: class_activation_maps(torch.randn(1, 4, 3, 3), torch.randn(2, 5)),
            r"weight must have shape \[K, D\] with D = 4 \(the features' channels\), got \[2, 5\]",
        ),
        (
            lambda: class_activation_maps(torch.randn(1, 4, 3, 3), torch.randn(2, 4), torch.randn(3)),
            r"bias must have shape \[K\] = \[2\], got \[3\]",
        ),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_class_activation_maps_average_to_the_logits():
    g = torch.Generator().manual_seed(1)
    features, weight, bias = (
        torch.randn(2, 6, 4, 5, generator=g),
        torch.randn(3, 6, generator=g),
        torch.randn(3, generator=g),
    )
    maps = class_activation_maps(features, weight, bias)
    assert maps.shape == (2, 3, 4, 5)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), F.linear(features.mean(dim=(2, 3)), weight, bias))
    # Position by position, the classifier applied to that position's features.
    torch.testing.assert_close(maps[1, :, 2, 3], F.linear(features[1, :, 2, 3], weight, bias))
    upsampled = class_activation_maps(features, weight, bias, size=(16, 20))
    torch.testing.assert_close(upsampled, F.interpolate(maps, size=(16, 20), mode="bilinear", align_corners=False))


def test_cam_model_on_a_dilated_resnet():
    torch.manual_seed(0)
    # In float64: the identity (mean of the maps = the logits) is exact, and float32's sums of 2048 products in two
    # orders would differ by what this CPU's kernels make of them.
    model = models.cam(4, depth=50).eval().double()
    images = torch.randn(2, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        logits = model(images)
        maps = model.class_activation_maps(images, upsample=False)
        assert logits.shape == (2, 4) and maps.shape == (2, 4, 4, 5)
        torch.testing.assert_close(maps.mean(dim=(2, 3)), logits)
        assert model.class_activation_maps(images).shape == (2, 4, 64, 80)


def test_cam_localises_what_it_was_only_told_is_there():
    """A classifier told only whether an image holds a bright square: afterwards, its map of "square" peaks on the
    square (the weak supervision CAM is for)."""
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()
    )
    model = models.CAMClassifier(2, body, 16)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def sample(count, g):
        images = torch.rand(count, 1, 32, 32, generator=g) * 0.5
        labels = torch.randint(0, 2, (count,), generator=g)
        corners = torch.randint(0, 26, (count, 2), generator=g)
        for image, label, (y, x) in zip(images, labels, corners.tolist()):
            if label:
                image[:, y : y + 6, x : x + 6] += 1.0
        return images, labels, corners

    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        images, labels, _ = sample(16, g)
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    images, labels, corners = sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9
        maps = model.class_activation_maps(images[labels == 1])[:, 1]
    peaks = maps.flatten(1).argmax(1)
    peak_y, peak_x = peaks // 32, peaks % 32
    y, x = corners[labels == 1].unbind(1)
    inside = (peak_y >= y) & (peak_y < y + 6) & (peak_x >= x) & (peak_x < x + 6)
    assert inside.float().mean() > 0.9
