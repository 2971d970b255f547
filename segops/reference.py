"""Pure-PyTorch references for the segops operators, written independently of the kernels (no shared code):
slow, loop-based and differentiable by autograd. Tests compare the kernels with them; use them for nothing
else. Geometry is computed in the input's accumulation dtype (float32 for float32/float16/bfloat16, float64 for
float64), as the kernels and torchvision do, so that rounding of bin edges agrees."""

import math
from typing import Tuple

import torch
from torch import Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scalar(value, dtype: torch.dtype) -> Tensor:
    return torch.tensor(value, dtype=dtype)


def _roi_align_axis_matrix(start: Tensor, bin_size: Tensor, grid: int, pooled: int, size: int) -> Tensor:
    """A[p, i] = sum of the bilinear weights that the samples of bin p give pixel i along one axis."""
    matrix = torch.zeros(pooled, size, dtype=start.dtype)
    for p in range(pooled):
        for i in range(grid):
            coord = start + p * bin_size + (i + 0.5) * bin_size / grid
            if not (-1 <= coord.item() <= size) or size == 0:
                continue
            coord = torch.clamp(coord, min=0)
            low = int(coord.item())
            if low >= size - 1:
                low = high = size - 1
                coord = _scalar(float(low), start.dtype)
            else:
                high = low + 1
            frac = coord - low
            matrix[p, low] += 1 - frac
            matrix[p, high] += frac
    return matrix


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of input Tensor[N, C, H, W] over rois Tensor[K, 5] -> Tensor[K, C, PH, PW].

    The bilinear samples of a box are separable, so each box is two interpolation matrices:
    out[k, c] = Ay @ input[n, c] @ Ax^T / samples_per_bin.
    """
    pooled_h, pooled_w = output_size
    _, channels, height, width = input.shape
    acc = _acc_dtype(input.dtype)
    offset = 0.5 if aligned else 0.0
    outputs = []
    for roi in rois.to(acc):
        scale = _scalar(spatial_scale, acc)
        x1, y1, x2, y2 = (roi[i] * scale - offset for i in range(1, 5))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = torch.clamp(roi_w, min=1), torch.clamp(roi_h, min=1)
        grid_h = sampling_ratio if sampling_ratio > 0 else max(int(math.ceil((roi_h / pooled_h).item())), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(int(math.ceil((roi_w / pooled_w).item())), 0)
        a_y = _roi_align_axis_matrix(y1, roi_h / pooled_h, grid_h, pooled_h, height)
        a_x = _roi_align_axis_matrix(x1, roi_w / pooled_w, grid_w, pooled_w, width)
        plane = input[int(roi[0].item())].to(acc)
        outputs.append(torch.einsum("ph,chw,qw->cpq", a_y, plane, a_x) / max(grid_h * grid_w, 1))
    if not outputs:
        return input.new_zeros((0, channels, pooled_h, pooled_w))
    return torch.stack(outputs).to(input.dtype)


def _round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def roi_pool(input: Tensor, rois: Tensor, output_size: Tuple[int, int], spatial_scale: float = 1.0) -> Tensor:
    """RoIPool of input Tensor[N, C, H, W] over rois Tensor[K, 5] -> Tensor[K, C, PH, PW]: the max of each bin's
    window of rounded pixel coordinates, 0 for an empty window."""
    pooled_h, pooled_w = output_size
    _, channels, height, width = input.shape
    acc = _acc_dtype(input.dtype)
    output = input.new_zeros((rois.shape[0], channels, pooled_h, pooled_w))
    for k, roi in enumerate(rois.to(acc)):
        x1, y1, x2, y2 = (_round_half_away((roi[i] * _scalar(spatial_scale, acc)).item()) for i in range(1, 5))
        bin_h = _scalar(max(y2 - y1 + 1, 1), acc) / pooled_h
        bin_w = _scalar(max(x2 - x1 + 1, 1), acc) / pooled_w
        plane = input[int(roi[0].item())]
        for ph in range(pooled_h):
            h_start = min(max(int(math.floor((ph * bin_h).item())) + y1, 0), height)
            h_end = min(max(int(math.ceil(((ph + 1) * bin_h).item())) + y1, 0), height)
            for pw in range(pooled_w):
                w_start = min(max(int(math.floor((pw * bin_w).item())) + x1, 0), width)
                w_end = min(max(int(math.ceil(((pw + 1) * bin_w).item())) + x1, 0), width)
                if h_end > h_start and w_end > w_start:
                    output[k, :, ph, pw] = plane[:, h_start:h_end, w_start:w_end].amax(dim=(1, 2))
    return output


def flow_warp_grid(flow: Tensor, height: int, width: int) -> Tensor:
    """The grid_sample grid (align_corners=True) that samples a height x width map at each output pixel plus its flow
    Tensor[N, 2, Ho, Wo] (pixels; channel 0 along x): Tensor[N, Ho, Wo, 2] in [-1, 1] coordinates."""
    _, _, out_h, out_w = flow.shape
    ys = torch.arange(out_h, dtype=flow.dtype, device=flow.device).view(1, out_h, 1)
    xs = torch.arange(out_w, dtype=flow.dtype, device=flow.device).view(1, 1, out_w)
    sample_x = xs + flow[:, 0]
    sample_y = ys + flow[:, 1]
    return torch.stack([2 * sample_x / (width - 1) - 1, 2 * sample_y / (height - 1) - 1], dim=-1)


def flow_warp(feature: Tensor, flow: Tensor, scale: Tensor = None) -> Tensor:
    """Deep Feature Flow's warp through PyTorch's own grid_sample (bilinear, zeros padding, align_corners=True):
    feature Tensor[N, C, H, W] sampled at each pixel of flow Tensor[N, 2, Ho, Wo] plus its flow, times scale.
    Needs H, W >= 2 (the normalised grid divides by H - 1 and W - 1)."""
    grid = flow_warp_grid(flow.to(feature.dtype), feature.shape[2], feature.shape[3])
    out = torch.nn.functional.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out if scale is None else out * scale


def flow_warp_brute_force(feature: Tensor, flow: Tensor, scale: Tensor = None) -> Tensor:
    """The warp's definition, summed over every pixel q: out = scale * sum_q g(qx, x + dx) g(qy, y + dy) f[q],
    g(a, b) = max(0, 1 - |a - b|). O(Ho * Wo * H * W): small inputs only."""
    _, _, height, width = feature.shape
    _, _, out_h, out_w = flow.shape
    ys = torch.arange(out_h, dtype=feature.dtype).view(out_h, 1) + flow[:, 1].to(feature.dtype)  # [N, Ho, Wo]
    xs = torch.arange(out_w, dtype=feature.dtype).view(1, out_w) + flow[:, 0].to(feature.dtype)
    qy = torch.arange(height, dtype=feature.dtype)
    qx = torch.arange(width, dtype=feature.dtype)
    weight_y = (1 - (qy.view(1, 1, 1, height) - ys.unsqueeze(-1)).abs()).clamp(min=0)  # [N, Ho, Wo, H]
    weight_x = (1 - (qx.view(1, 1, 1, width) - xs.unsqueeze(-1)).abs()).clamp(min=0)  # [N, Ho, Wo, W]
    out = torch.einsum("nyxh,nyxw,nchw->ncyx", weight_y, weight_x, feature)
    return out if scale is None else out * scale


def max_unpool2d_brute_force(input: Tensor, indices: Tensor, output_size) -> Tensor:
    """max_unpool2d's definition in plain PyTorch ops: input, indices Tensor[N, C, H, W] -> Tensor[N, C, Ho, Wo],
    the input at the largest plane position winning each duplicated index (scatter_reduce "amax" of positions)."""
    winner, _ = _unpool_winners(indices, output_size)
    flat = input.flatten(2).gather(2, winner.clamp(min=0))
    return torch.where(winner >= 0, flat, torch.zeros_like(flat)).view(*input.shape[:2], *output_size)


def max_unpool2d_grad_brute_force(grad: Tensor, indices: Tensor) -> Tensor:
    """The derivative of max_unpool2d_brute_force: grad Tensor[N, C, Ho, Wo] gathered by the winners only."""
    winner, flat_indices = _unpool_winners(indices, grad.shape[2:])
    positions = torch.arange(flat_indices.shape[2], device=indices.device).expand_as(flat_indices)
    gathered = grad.flatten(2).gather(2, flat_indices)
    won = winner.gather(2, flat_indices) == positions
    return torch.where(won, gathered, torch.zeros_like(gathered)).view(indices.shape)


def _unpool_winners(indices: Tensor, output_size):
    flat_indices = indices.flatten(2)
    positions = torch.arange(flat_indices.shape[2], device=indices.device).expand_as(flat_indices)
    winner = torch.full(
        (*indices.shape[:2], output_size[0] * output_size[1]), -1, dtype=torch.int64, device=indices.device
    )
    return winner.scatter_reduce(2, flat_indices, positions, "amax"), flat_indices


def permutohedral_lattice_brute_force(features: Tensor):
    """The permutohedral lattice of one point set, in plain Python (Adams et al. 2010, as pydensecrf embeds points),
    for tests: features Tensor[N, d] (float64) gives (vertex_ids [N, d+1], weights [N, d+1], neighbours
    [M, d+1, 2]) with vertices numbered in the order their keys first occur, -1 for a missing neighbour."""
    points, d = features.shape
    scale = [math.sqrt(2.0 / 3.0) * (d + 1) / math.sqrt((i + 2) * (i + 1)) for i in range(d)]
    number = {}
    vertex_ids, weights = [], []
    for f in features.tolist():
        elevated = [0.0] * (d + 1)
        total = 0.0
        for j in range(d, 0, -1):
            cf = f[j - 1] * scale[j - 1]
            elevated[j] = total - j * cf
            total += cf
        elevated[0] = total
        rem0 = [_round_half_away(e / (d + 1)) * (d + 1) for e in elevated]
        offset = sum(rem0) // (d + 1)
        # rank: position of each remainder in decreasing order (ties: the lower index ranks higher).
        diff = [elevated[i] - rem0[i] for i in range(d + 1)]
        rank = [
            sum(1 for j in range(d + 1) if diff[j] > diff[i] or (diff[j] == diff[i] and j < i)) for i in range(d + 1)
        ]
        rank = [r + offset for r in rank]
        for i in range(d + 1):
            if rank[i] < 0:
                rank[i] += d + 1
                rem0[i] += d + 1
            elif rank[i] > d:
                rank[i] -= d + 1
                rem0[i] -= d + 1
        bary = [0.0] * (d + 2)
        for i in range(d + 1):
            v = (elevated[i] - rem0[i]) / (d + 1)
            bary[d - rank[i]] += v
            bary[d - rank[i] + 1] -= v
        bary[0] += 1.0 + bary[d + 1]
        ids = []
        for r in range(d + 1):
            key = tuple(rem0[i] + (r if rank[i] <= d - r else r - (d + 1)) for i in range(d))
            ids.append(number.setdefault(key, len(number)))
        vertex_ids.append(ids)
        weights.append(bary[: d + 1])
    keys = list(number)
    neighbours = []
    for key in keys:
        row = []
        for j in range(d + 1):
            pair = []
            for step in (1, -1):
                other = [k - step for k in key]
                if j < d:
                    other[j] = key[j] + step * d
                pair.append(number.get(tuple(other), -1))
            row.append(pair)
        neighbours.append(row)
    return (
        torch.tensor(vertex_ids, dtype=torch.int32),
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(neighbours, dtype=torch.int32).view(len(keys), d + 1, 2),
    )


def gaussian_filter_brute_force(features: Tensor, values: Tensor, normalize: bool = True) -> Tensor:
    """The exact Gaussian filter, O(N^2): out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j (j = i included) for features
    Tensor[B, N, d] and values Tensor[B, N, C]; with normalize, pydensecrf's symmetric normalisation
    D^-1/2 K D^-1/2, D = diag(K 1)."""
    kernel = torch.exp(-0.5 * torch.cdist(features, features).square())
    if not normalize:
        return kernel @ values
    scale = kernel.sum(-1, keepdim=True).rsqrt()
    return scale * (kernel @ (scale * values))


def dense_crf_brute_force(
    unary: Tensor,
    image: Tensor,
    num_iters: int,
    smoothness_sxy: float,
    smoothness_weight: float,
    appearance_sxy: float,
    appearance_srgb: float,
    appearance_weight: float,
    compatibility: Tensor = None,
) -> Tensor:
    """Exact mean-field inference in the fully-connected CRF of segops.dense_crf (the same model and
    normalisation, exact Gaussian kernels instead of the lattice), O(N^2) per step: unary Tensor[B, L, H, W]
    (logits), image Tensor[B, 3, H, W] give Tensor[B, L, H, W]."""
    batch, labels, height, width = unary.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    position = torch.stack([xs, ys], -1).view(1, -1, 2).expand(batch, -1, -1)
    colour = image.to(torch.float64).permute(0, 2, 3, 1).reshape(batch, -1, 3)
    kernels = [
        (position / smoothness_sxy, smoothness_weight),
        (torch.cat([position / appearance_sxy, colour / appearance_srgb], -1), appearance_weight),
    ]
    logits = unary.to(torch.float64).permute(0, 2, 3, 1).reshape(batch, -1, labels)
    mu = 1.0 - torch.eye(labels, dtype=torch.float64) if compatibility is None else compatibility.to(torch.float64)
    q = torch.softmax(logits, -1)
    for _ in range(num_iters):
        message = sum(weight * gaussian_filter_brute_force(features, q) for features, weight in kernels)
        q = torch.softmax(logits - message @ mu.t(), -1)
    return q.view(batch, height, width, labels).permute(0, 3, 1, 2)
