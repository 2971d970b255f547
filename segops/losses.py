"""Losses of semantic and salient-object segmentation: per-pixel cross-entropy, binary cross-entropy, the IoU loss,
the SSIM loss and BASNet's hybrid of the three (Qin et al. 2019), all differentiable."""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100) -> Tensor:
    """Per-pixel cross-entropy, averaged over the counted pixels (weighted by their class weight).

    Args:
        logits (Tensor[N, K, H, W]): scores.
        target (Tensor[N, H, W], int64): labels in [0, K), or ignore_index (not counted).
        weight (Tensor[K], optional): class weights.
    """
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def segmentation_loss(
    outputs: Dict[str, Tensor], target: Tensor, aux_weight: float = 0.4, ignore_index: int = 255
) -> Tensor:
    """The training loss of a semantic model's outputs (torchvision's convention: {"out": logits} plus "aux" where
    the model has an auxiliary head): cross-entropy of "out", plus aux_weight times that of "aux". 0.4 is PSPNet's
    weight (Zhao et al. 2017); torchvision's training reference uses 0.5 for its FCN and DeepLabV3.

    Args:
        outputs (dict): "out" Tensor[N, K, H, W] and optionally "aux" Tensor[N, K, H, W].
        target (Tensor[N, H, W], int64): labels in [0, K), or ignore_index (255: Pascal VOC's boundary label).
    """
    if not isinstance(outputs, dict) or "out" not in outputs:
        raise ValueError(f"segmentation_loss: outputs must be a dict with an 'out' entry, got {type(outputs).__name__}")
    loss = cross_entropy(outputs["out"], target, ignore_index=ignore_index)
    if "aux" in outputs:
        loss = loss + aux_weight * cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return loss


def unet_weight_map(instances: Tensor, w0: float = 10.0, sigma: float = 5.0) -> Tensor:
    """U-Net's pixel weights (Ronneberger et al. 2015, eq. 2) for a weighted cross-entropy: w(x) = w_c(x) + w0
    exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) on background pixels, w_c(x) on cells, where w_c balances the background
    and cell frequencies (each class's weight is inversely proportional to its pixel count, the two averaging 1 per
    pixel) and d1, d2 are the distances to the nearest and the second-nearest cell: the thin gaps between touching
    cells weigh most. w0 = 10 and sigma = 5 pixels are the paper's.

    Args:
        instances (Tensor[N, H, W] or [H, W], int): 0 for the background, a distinct positive id per cell.

    Returns:
        Tensor[N, H, W] (or [H, W]), float32; use as ``(F.cross_entropy(logits, labels, reduction="none") *
        weights).mean()``.
    """
    if instances.dim() not in (2, 3) or instances.is_floating_point() or instances.is_complex():
        raise ValueError(
            f"unet_weight_map: instances must be an integer Tensor[N, H, W] or [H, W], got {instances.dtype} of "
            f"shape {tuple(instances.shape)}"
        )
    if instances.dim() == 2:
        return unet_weight_map(instances[None], w0, sigma)[0]
    maps = []
    height, width = instances.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    for labels in instances.cpu():
        cells = labels > 0
        counts = torch.stack([(~cells).sum(), cells.sum()]).float().clamp_min(1)
        class_weight = (labels.numel() / (2 * counts))[cells.long()]
        ids = labels.unique()
        ids = ids[ids > 0]
        if len(ids) < 2:  # no gap between two cells to weigh
            maps.append(class_weight)
            continue
        # The nearest pixel of a cell, from outside it, lies on its boundary: distances to boundary pixels only.
        padded = F.pad(labels[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        neighbours = torch.stack([padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]])
        boundary = cells & (neighbours != labels.float()).any(0)
        distances = torch.stack(
            [torch.cdist(pixels, pixels[(boundary & (labels == i)).flatten()]).min(1).values for i in ids]
        )
        nearest = distances.topk(2, dim=0, largest=False).values.sum(0).view(height, width)
        border = w0 * torch.exp(-nearest.square() / (2 * sigma**2))
        maps.append(class_weight + torch.where(cells, torch.zeros_like(border), border))
    return torch.stack(maps).to(instances.device)


def binary_cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross-entropy of probabilities pred Tensor[N, 1, H, W] in [0, 1] against target of its shape."""
    _check_same_shape("binary_cross_entropy", pred, target)
    return F.binary_cross_entropy(pred, target)


def iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """BASNet's IoU loss: 1 - sum(pred * target) / sum(pred + target - pred * target) per image, averaged over the
    batch. pred Tensor[N, C, H, W] of probabilities, target of its shape in [0, 1]."""
    _check_same_shape("iou_loss", pred, target)
    intersection = (pred * target).flatten(1).sum(dim=1)
    union = (pred + target - pred * target).flatten(1).sum(dim=1)
    return (1 - intersection / union).mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> Tensor:
    """The normalised 2-D Gaussian window Tensor[size, size] of the SSIM (Wang et al. 2004: 11x11, sigma 1.5)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-(coords**2) / (2 * sigma**2))
    line = line / line.sum()
    return torch.outer(line, line).to(dtype=dtype, device=device)


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of pred and target Tensor[N, C, H, W] with values in [0, 1]: local statistics under
    a Gaussian window (zero-padded by window_size // 2, per channel), C1 = 0.01^2, C2 = 0.03^2."""
    _check_same_shape("ssim", pred, target)
    channels = pred.shape[1]
    window = gaussian_window(window_size, sigma, pred.dtype, pred.device).expand(channels, 1, window_size, window_size)

    def local_mean(x):
        return F.conv2d(x, window, padding=window_size // 2, groups=channels)

    mu_pred, mu_target = local_mean(pred), local_mean(target)
    var_pred = local_mean(pred * pred) - mu_pred**2
    var_target = local_mean(target * target) - mu_target**2
    covariance = local_mean(pred * target) - mu_pred * mu_target
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_pred * mu_target + c1) * (2 * covariance + c2)) / (
        (mu_pred**2 + mu_target**2 + c1) * (var_pred + var_target + c2)
    )
    return ssim_map.mean()


def ssim_loss(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """1 - :func:`ssim`."""
    return 1 - ssim(pred, target, window_size, sigma)


def hybrid_loss(pred: Tensor, target: Tensor) -> Tensor:
    """BASNet's hybrid loss: binary cross-entropy + SSIM loss + IoU loss, on probabilities pred Tensor[N, 1, H, W]
    and target of its shape in [0, 1]."""
    return binary_cross_entropy(pred, target) + ssim_loss(pred, target) + iou_loss(pred, target)


def _check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: target must have pred's shape {list(pred.shape)}, got {list(target.shape)}")


# ------------------------------------------------------------------------ unseen object instance segmentation (UCN)
# Xiang, Xie, Mousavian and Fox (2020): pixel embeddings on the unit sphere, pulled towards their object's spherical
# mean and pushing the means apart, in the cosine distance d(a, b) = (1 - a . b) / 2 (in [0, 1]).


def _cluster_means(embeddings: Tensor, labels: Tensor, ignore_index: Optional[int]):
    """Per image: (embeddings [P, D], object index of each pixel [P], spherical means [K, D]) over its objects."""
    if embeddings.dim() != 4 or labels.dim() != 3 or labels.shape != (embeddings.shape[0], *embeddings.shape[2:]):
        raise ValueError(
            f"UCN losses: embeddings must be [N, D, H, W] and labels [N, H, W], got "
            f"{list(embeddings.shape)} and {list(labels.shape)}"
        )
    for image, image_labels in zip(embeddings, labels):
        points = image.flatten(1).t()
        flat = image_labels.flatten()
        keep = flat != ignore_index if ignore_index is not None else torch.ones_like(flat, dtype=torch.bool)
        points, flat = points[keep], flat[keep]
        objects, index = torch.unique(flat, return_inverse=True)
        sums = torch.zeros(len(objects), points.shape[1], dtype=points.dtype, device=points.device)
        sums = sums.index_add(0, index, points)
        yield points, index, F.normalize(sums, dim=1)


def intra_cluster_loss(
    embeddings: Tensor, labels: Tensor, alpha: float = 0.02, ignore_index: Optional[int] = None
) -> Tensor:
    """UCN's intra-cluster loss: per object k, over its pixels i whose distance to the object's spherical mean
    mu_k exceeds the margin alpha, the mean of d(mu_k, x_i)^2; averaged over the objects of each image (background
    included: it is one of the labels), then over images. Objects with no pixel beyond the margin add 0.

    Args:
        embeddings (Tensor[N, D, H, W]): unit-norm along D. labels (Tensor[N, H, W]): object ids (integers).
        alpha (float): the margin (the paper's 0.02). ignore_index: a label to leave out.
    """
    losses = []
    for points, index, means in _cluster_means(embeddings, labels, ignore_index):
        distance = (1 - (points * means[index]).sum(1)) / 2
        active = (distance - alpha >= 0).to(points.dtype)
        count = torch.zeros(len(means), dtype=points.dtype, device=points.device).index_add(0, index, active)
        total = torch.zeros_like(count).index_add(0, index, active * distance.square())
        losses.append((total / count.clamp_min(1)).mean())
    return torch.stack(losses).mean()


def inter_cluster_loss(
    embeddings: Tensor, labels: Tensor, delta: float = 0.5, ignore_index: Optional[int] = None
) -> Tensor:
    """UCN's inter-cluster loss: the mean over pairs of objects k != k' of an image of
    max(0, delta - d(mu_k, mu_k'))^2 (the paper's margin delta = 0.5), averaged over images; 0 for an image with one
    object. Arguments as :func:`intra_cluster_loss`."""
    losses = []
    for _, _, means in _cluster_means(embeddings, labels, ignore_index):
        count = len(means)
        if count < 2:
            losses.append(means.sum() * 0)
            continue
        distance = (1 - means @ means.t()) / 2
        pairs = torch.triu(torch.ones(count, count, dtype=torch.bool, device=means.device), diagonal=1)
        losses.append(F.relu(delta - distance[pairs]).square().mean())
    return torch.stack(losses).mean()
