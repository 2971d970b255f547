"""Clustering of pixel embeddings into instances: mean shift on the unit sphere with a von Mises-Fisher kernel, as
UCN (Xiang et al. 2020) turns its embeddings into object masks."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_shift(
    embeddings: Tensor,
    kappa: float = 20.0,
    num_seeds: int = 100,
    max_iters: int = 10,
    merge_distance: float = 0.05,
    generator: torch.Generator = None,
) -> Tuple[Tensor, Tensor]:
    """Von Mises-Fisher mean shift on unit vectors.

    Seeds (farthest-point samples of the points, the first one random) move to the kernel-weighted spherical mean of
    all points, m <- normalise(sum_i exp(kappa * m . x_i) x_i), for max_iters steps; modes closer than
    merge_distance in d(a, b) = (1 - a . b) / 2 are merged (the first kept), and each point takes the label of its
    nearest mode.

    Args:
        embeddings (Tensor[P, D]): unit vectors (normalised here anyway); or Tensor[D, H, W] for one image.
        kappa (float): the kernel's concentration (UCN's 20). num_seeds (int): at most this many starts.

    Returns:
        (labels Tensor[P] or Tensor[H, W], int64 in [0, M); modes Tensor[M, D])
    """
    if embeddings.dim() == 3:
        labels, modes = mean_shift(embeddings.flatten(1).t(), kappa, num_seeds, max_iters, merge_distance, generator)
        return labels.view(embeddings.shape[1:]), modes
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"mean_shift: embeddings must be a non-empty Tensor[P, D] or Tensor[D, H, W], got {list(embeddings.shape)}"
        )
    if not kappa > 0 or num_seeds < 1 or max_iters < 0:
        raise ValueError(
            f"mean_shift: kappa must be > 0, num_seeds >= 1 and max_iters >= 0, got {kappa}, {num_seeds}, {max_iters}"
        )
    points = F.normalize(embeddings.double(), dim=1)
    seeds = _farthest_points(points, min(num_seeds, len(points)), generator)
    for _ in range(max_iters):
        # exp(kappa (m . x - 1)): the constant factor exp(-kappa) cancels in the normalisation and avoids overflow.
        weights = torch.exp(kappa * (seeds @ points.t() - 1))
        seeds = F.normalize(weights @ points, dim=1)
    modes = []
    for seed in seeds:
        if all((1 - torch.dot(seed, mode)) / 2 > merge_distance for mode in modes):
            modes.append(seed)
    modes = torch.stack(modes)
    labels = (points @ modes.t()).argmax(dim=1)
    return labels, modes.to(embeddings.dtype)


def _farthest_points(points: Tensor, count: int, generator) -> Tensor:
    first = int(torch.randint(len(points), (1,), generator=generator))
    chosen = [first]
    nearest = 1 - points @ points[first]  # distance to the nearest chosen point
    for _ in range(count - 1):
        index = int(nearest.argmax())
        chosen.append(index)
        nearest = torch.minimum(nearest, 1 - points @ points[index])
    return points[chosen]
