"""Panoptic merging (Kirillov, Girshick, He and Dollar 2019, Panoptic FPN section 3): instance masks and a semantic
map become one panoptic map [H, W, 2] of (category id, instance id), which segops.metrics.PanopticQuality scores."""

from typing import Sequence

import torch
from torch import Tensor

VOID = -1  # the category of unassigned pixels: neither a thing nor a stuff category


@torch.no_grad()
def panoptic_merge(masks: Tensor, scores: Tensor, labels: Tensor, semantic: Tensor, stuffs: Sequence[int],
                   overlap_threshold: float = 0.5, score_threshold: float = 0.5,
                   stuff_min_area: int = 4096) -> Tensor:
    """Panoptic FPN's heuristic merging (as Detectron2 implements it).

    1. Instances by decreasing score, those below `score_threshold` dropped: each is pasted on the pixels no
       earlier instance took, unless more than `overlap_threshold` of its mask is already taken (then it is
       dropped). Pasted instances get instance ids 1, 2, ... in pasting order.
    2. Each stuff category of the semantic map takes its pixels that no instance took, if there are at least
       `stuff_min_area` of them (instance id 0). Semantic labels of thing categories are ignored.
    3. Pixels left are void: category VOID (-1), instance 0.

    Args:
        masks (Tensor[M, H, W]): instance masks (bool, or probabilities thresholded at 0.5).
        scores (Tensor[M]): instance confidences. labels (Tensor[M]): instance (thing) category ids.
        semantic (Tensor[H, W]): the semantic branch's category per pixel (its argmax).
        stuffs (sequence of int): the stuff category ids.

    Returns:
        Tensor[H, W, 2] int64: (category id, instance id) per pixel.
    """
    if masks.dim() != 3 or masks.shape[1:] != semantic.shape or scores.shape != (masks.shape[0],) \
            or labels.shape != (masks.shape[0],):
        raise ValueError(f"panoptic_merge: masks must be [M, H, W], scores and labels [M] and semantic [H, W], got "
                         f"{list(masks.shape)}, {list(scores.shape)}, {list(labels.shape)} and {list(semantic.shape)}")
    masks = masks if masks.dtype == torch.bool else masks > 0.5
    category = torch.full(semantic.shape, VOID, dtype=torch.int64, device=semantic.device)
    instance = torch.zeros(semantic.shape, dtype=torch.int64, device=semantic.device)
    taken = torch.zeros(semantic.shape, dtype=torch.bool, device=semantic.device)
    next_id = 1
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        if scores[index] < score_threshold:
            break
        mask = masks[index]
        area = int(mask.sum())
        if area == 0 or int((mask & taken).sum()) / area > overlap_threshold:
            continue
        mask = mask & ~taken
        category[mask], instance[mask] = int(labels[index]), next_id
        taken |= mask
        next_id += 1
    for stuff in stuffs:
        mask = (semantic == stuff) & ~taken
        if int(mask.sum()) >= stuff_min_area:
            category[mask] = stuff
            taken |= mask
    return torch.stack([category, instance], dim=-1)
