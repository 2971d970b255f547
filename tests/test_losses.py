import math

import pytest
import torch
import torch.nn.functional as F

from segops import losses


def test_cross_entropy_against_the_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 1, 2] = -100
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    total, norm = 0.0, 0.0
    for n in range(2):
        for y in range(3):
            for x in range(5):
                t = target[n, y, x].item()
                if t == -100:
                    continue
                log_p = logits[n, t, y, x] - torch.logsumexp(logits[n, :, y, x], 0)
                total += -weight[t].item() * log_p.item()
                norm += weight[t].item()
    assert losses.cross_entropy(logits, target, weight).item() == pytest.approx(total / norm)


def _pair(seed, shape=(2, 1, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    target = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.5).double()
    return pred, target


def test_binary_cross_entropy_and_iou_against_the_formulas():
    pred, target = _pair(1)
    bce = -(target * pred.log() + (1 - target) * (1 - pred).log()).mean()
    assert losses.binary_cross_entropy(pred, target).item() == pytest.approx(bce.item())
    per_image = [1 - (p * t).sum() / (p + t - p * t).sum() for p, t in zip(pred, target)]
    assert losses.iou_loss(pred, target).item() == pytest.approx(sum(per_image).item() / 2)


def _ssim_by_patches(pred, target, size=11, sigma=1.5):
    """SSIM from explicit zero-padded patches weighted by the Gaussian window (no convolution)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-(coords**2) / (2 * sigma**2))
    window = torch.outer(line, line) / line.sum() ** 2
    pad = size // 2
    values = []
    for a, b in zip(pred.flatten(0, 1), target.flatten(0, 1)):
        pa, pb = F.pad(a, (pad,) * 4), F.pad(b, (pad,) * 4)
        for y in range(a.shape[0]):
            for x in range(a.shape[1]):
                wa, wb = pa[y : y + size, x : x + size], pb[y : y + size, x : x + size]
                ma, mb = (window * wa).sum(), (window * wb).sum()
                va, vb = (window * wa * wa).sum() - ma**2, (window * wb * wb).sum() - mb**2
                cov = (window * wa * wb).sum() - ma * mb
                c1, c2 = 0.01**2, 0.03**2
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return torch.stack(values).mean()


def test_ssim_against_patches_and_identity():
    pred, target = _pair(2, shape=(1, 2, 12, 13))
    assert losses.ssim(pred, target).item() == pytest.approx(_ssim_by_patches(pred, target).item(), rel=1e-10)
    assert losses.ssim_loss(pred, pred).item() == pytest.approx(0.0, abs=1e-12)
    window = losses.gaussian_window(11, 1.5, torch.float64)
    assert window.sum().item() == pytest.approx(1.0) and window[5, 5] == window.max()


def test_hybrid_is_the_sum_and_differentiable():
    pred, target = _pair(3, shape=(2, 1, 12, 12))
    expected = (
        losses.binary_cross_entropy(pred, target) + losses.ssim_loss(pred, target) + losses.iou_loss(pred, target)
    )
    assert losses.hybrid_loss(pred, target).item() == pytest.approx(expected.item())
    assert torch.autograd.gradcheck(lambda p: losses.hybrid_loss(p, target), (pred.requires_grad_(),))
    assert math.isfinite(losses.hybrid_loss(pred, target).item())


def test_shape_mismatch_is_an_error():
    pred, target = _pair(4)
    with pytest.raises(ValueError, match=r"iou_loss: target must have pred's shape \[2, 1, 16, 16\], got \[2, 1, 16\]"):
        losses.iou_loss(pred, target[..., 0])


def test_unet_weight_map_against_a_brute_force_of_the_papers_formula():
    """Eq. 2 of Ronneberger et al. computed by hand: class-balancing weights plus w0 exp(-(d1 + d2)^2 / 2 sigma^2)
    on the background, d1 and d2 the distances to the nearest and second-nearest cell (over every pixel of each)."""
    instances = torch.zeros(2, 14, 17, dtype=torch.long)
    instances[0, 2:7, 1:6], instances[0, 2:9, 7:12], instances[0, 10:13, 3:15] = 1, 2, 3  # touching gaps
    instances[1, 4:9, 4:9] = 5  # a single cell: no gap to weigh
    w0, sigma = 10.0, 5.0
    actual = losses.unet_weight_map(instances, w0, sigma)
    for labels, weights in zip(instances, actual):
        cells = labels > 0
        count = {True: int(cells.sum()), False: int((~cells).sum())}
        ids = [int(i) for i in labels.unique() if i > 0]
        for y in range(labels.shape[0]):
            for x in range(labels.shape[1]):
                expected = labels.numel() / (2 * count[bool(cells[y, x])])
                if not cells[y, x] and len(ids) >= 2:
                    nearest = sorted(
                        min(math.hypot(y - cy, x - cx) for cy, cx in (labels == i).nonzero().tolist()) for i in ids
                    )
                    expected += w0 * math.exp(-((nearest[0] + nearest[1]) ** 2) / (2 * sigma**2))
                assert abs(weights[y, x].item() - expected) < 1e-4 * expected, (y, x)
    assert torch.equal(losses.unet_weight_map(instances[0]), actual[0])
    with pytest.raises(ValueError, match="unet_weight_map: instances must be an integer Tensor"):
        losses.unet_weight_map(instances.float())
