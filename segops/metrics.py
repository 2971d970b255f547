"""Metrics of segmentation. Semantic: pixel accuracy, mean accuracy, mean IU and frequency-weighted IU exactly as
Long et al. (2015, "Fully Convolutional Networks for Semantic Segmentation", section 5) define them, from a
confusion matrix accumulated over batches with one bincount and mergeable across processes. Panoptic: PQ, SQ and
RQ (Kirillov et al. 2019) with the COCO panoptic API's void and crowd rules."""

from typing import Dict, Optional

import torch
from torch import Tensor


class SegmentationMetrics:
    """Accumulates the confusion matrix n[i, j] = number of pixels of class i predicted as class j.

    With t_i = sum_j n[i, j] (pixels of class i) and p_j = sum_i n[i, j] (pixels predicted j), ``compute()`` returns
    ``pixel_accuracy`` = sum_i n_ii / sum_i t_i, ``mean_accuracy`` = mean_i n_ii / t_i, ``iou`` (per class)
    = n_ii / (t_i + p_i - n_ii), ``mean_iou`` = mean_i iou_i and ``fw_iou`` = sum_i t_i iou_i / sum_i t_i.
    Means run over the classes where the ratio is defined (t_i > 0 for the accuracy, t_i + p_i - n_ii > 0 for the
    IU; the FCN reference code's nanmean): a class absent from both targets and predictions is NaN in ``iou`` and
    left out of the means. Pixels whose target is ``ignore_index`` are not counted.

    Args:
        num_classes (int): K >= 1.
        ignore_index (int, optional): a target label to skip (255 in PASCAL VOC).
        device: where the confusion matrix lives (that of the updates).
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None, device=None) -> None:
        if num_classes < 1:
            raise ValueError(f"SegmentationMetrics: num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Adds a batch. pred: labels Tensor[N, H, W] (integer) or logits Tensor[N, K, H, W] (argmax over K);
        target: labels Tensor[N, H, W] in [0, K), or ignore_index."""
        k = self.num_classes
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != k:
                raise ValueError(f"SegmentationMetrics.update: logits must have {k} channels, got {list(pred.shape)}")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"SegmentationMetrics.update: pred must be labels of target's shape {list(target.shape)} or logits "
                f"[N, {k}, ...], got {list(pred.shape)}"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("SegmentationMetrics.update: labels must be integer tensors")
        if self.ignore_index is not None:
            counted = target != self.ignore_index
            pred, target = pred[counted], target[counted]
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        for name, labels in (("target", target), ("pred", pred)):
            bad = (labels < 0) | (labels >= k)
            if bad.any():
                raise ValueError(
                    f"SegmentationMetrics.update: {name} labels must be in [0, {k})"
                    + (f" or {self.ignore_index}" if self.ignore_index is not None and name == "target" else "")
                    + f", got {labels[bad][0].item()}"
                )
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.confusion += counts.view(k, k).to(self.confusion.device)

    def all_reduce(self) -> None:
        """Sums the confusion matrices of every process of the default torch.distributed group, in place."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)

    def merge_(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Adds another accumulator's counts (same num_classes) to this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"SegmentationMetrics.merge_: num_classes differ ({self.num_classes} and {other.num_classes})"
            )
        self.confusion += other.confusion.to(self.confusion.device)
        return self

    def compute(self) -> Dict[str, object]:
        hist = self.confusion.double()
        true_positive = hist.diag()
        per_target = hist.sum(dim=1)
        union = per_target + hist.sum(dim=0) - true_positive
        total = hist.sum()
        accuracy = true_positive / per_target  # NaN where a class has no target pixels
        iou = true_positive / union  # NaN where a class is absent from targets and predictions
        frequency = per_target / total
        return {
            "pixel_accuracy": (true_positive.sum() / total).item(),
            "mean_accuracy": accuracy.nanmean().item(),
            "mean_iou": iou.nanmean().item(),
            "fw_iou": (frequency[per_target > 0] * iou[per_target > 0]).sum().item() if total > 0 else float("nan"),
            "iou": iou.cpu(),
        }


class PanopticQuality:
    """Panoptic quality PQ = SQ * RQ (Kirillov et al. 2019), accumulated over images.

    Inputs are Tensor[N, H, W, 2] of integers (category id, instance id). A segment is the set of pixels of one
    (category, instance) pair for a thing category, and of one category for a stuff category (its instance ids are
    ignored). Predicted and ground-truth segments of one category match when their IoU exceeds 0.5 (so each matches
    at most once); per category, ``PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2)``, ``SQ = sum of matched IoUs /
    TP`` and ``RQ = TP / (TP + FP / 2 + FN / 2)``, averaged over the categories with TP + FP + FN > 0 (overall,
    things and stuff), as the COCO panoptic API does.

    Void and crowd, as in the COCO panoptic API: ground-truth pixels whose category is in neither ``things`` nor
    ``stuffs`` are void, and a thing pixel of the ground truth with instance id 0 belongs to that category's crowd
    region (Cityscapes' convention for groups). The void pixels a predicted segment covers are left out of its IoU
    with a ground-truth segment; an unmatched predicted segment is not a false positive when more than half of it
    lies on void or on the crowd region of its category; crowd regions are never matched nor missed. Predicted
    pixels of other categories are unlabelled.

    Args:
        things (iterable of int): the thing category ids (countable objects, with instance ids).
        stuffs (iterable of int): the stuff category ids (amorphous regions).
    """

    def __init__(self, things, stuffs) -> None:
        self.things, self.stuffs = sorted(set(things)), sorted(set(stuffs))
        if set(self.things) & set(self.stuffs):
            raise ValueError(
                f"PanopticQuality: a category cannot be both thing and stuff: "
                f"{sorted(set(self.things) & set(self.stuffs))}"
            )
        self.reset()

    def reset(self) -> None:
        categories = self.things + self.stuffs
        self.iou_sum = {c: 0.0 for c in categories}
        self.tp = {c: 0 for c in categories}
        self.fp = {c: 0 for c in categories}
        self.fn = {c: 0 for c in categories}

    def _segment_ids(self, panoptic: Tensor, ground_truth: bool) -> Tensor:
        """One int64 id per pixel: category * 2^32 + instance for things, category * 2^32 for stuff, -1 for void or
        unlabelled pixels; crowd pixels of the ground truth get -2 - category."""
        category, instance = panoptic[..., 0].long(), panoptic[..., 1].long()
        is_thing = torch.isin(category, torch.tensor(self.things, dtype=torch.long, device=category.device))
        is_stuff = torch.isin(category, torch.tensor(self.stuffs, dtype=torch.long, device=category.device))
        ids = torch.where(is_thing, category * 2**32 + instance, category * 2**32)
        ids = torch.where(is_thing | is_stuff, ids, torch.full_like(ids, -1))
        if ground_truth:
            ids = torch.where(is_thing & (instance == 0), -2 - category, ids)
        return ids

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Adds images: pred and target Tensor[N, H, W, 2] of integers (category id, instance id)."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 2:
            raise ValueError(
                f"PanopticQuality.update: pred and target must be Tensor[N, H, W, 2] of one shape, got "
                f"{list(pred.shape)} and {list(target.shape)}"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("PanopticQuality.update: ids must be integer tensors")
        for pred_image, target_image in zip(pred, target):
            self._update_image(
                self._segment_ids(pred_image, False).flatten().cpu(),
                self._segment_ids(target_image, True).flatten().cpu(),
            )

    def _update_image(self, pred_ids: Tensor, target_ids: Tensor) -> None:
        def areas(ids):
            values, counts = ids.unique(return_counts=True)
            return dict(zip(values.tolist(), counts.tolist()))

        pred_area, target_area = areas(pred_ids), areas(target_ids)
        pairs, counts = torch.stack([target_ids, pred_ids]).unique(dim=1, return_counts=True)
        intersection = {(t, p): n for (t, p), n in zip(pairs.t().tolist(), counts.tolist())}
        category = lambda segment: segment >> 32  # noqa: E731  (for segment ids >= 0)
        matched_pred, matched_target = set(), set()
        for (t, p), inter in intersection.items():
            if t < 0 or p < 0 or category(t) != category(p):
                continue
            union = pred_area[p] + target_area[t] - inter - intersection.get((-1, p), 0)
            iou = inter / union
            if iou > 0.5:
                matched_pred.add(p)
                matched_target.add(t)
                self.tp[category(t)] += 1
                self.iou_sum[category(t)] += iou
        for t in target_area:
            if t >= 0 and t not in matched_target:
                self.fn[category(t)] += 1
        for p, area in pred_area.items():
            if p < 0 or p in matched_pred:
                continue
            ignored = intersection.get((-1, p), 0) + intersection.get((-2 - category(p), p), 0)
            if ignored / area <= 0.5:
                self.fp[category(p)] += 1

    def compute(self) -> Dict[str, float]:
        """``pq``, ``sq``, ``rq`` over all categories and ``pq_things`` ... ``rq_stuff``; per category in
        ``per_category``. A group with no category to average is NaN."""
        per_category = {}
        for c in self.things + self.stuffs:
            tp, fp, fn = self.tp[c], self.fp[c], self.fn[c]
            if tp + fp + fn == 0:
                continue
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_category[c] = {
                "pq": self.iou_sum[c] / denominator,
                "sq": self.iou_sum[c] / tp if tp else 0.0,
                "rq": tp / denominator,
            }
        result: Dict[str, object] = {"per_category": per_category}
        for suffix, group in (("", self.things + self.stuffs), ("_things", self.things), ("_stuff", self.stuffs)):
            present = [per_category[c] for c in group if c in per_category]
            for key in ("pq", "sq", "rq"):
                result[key + suffix] = sum(r[key] for r in present) / len(present) if present else float("nan")
        return result


class SaliencyMetrics:
    """Salient-object detection metrics, accumulated image by image: MAE, max F-measure (beta^2 = 0.3) and the
    S-measure (Fan et al. 2017), as the field's common evaluation code (PySODMetrics) computes them.

    ``update(pred, target)`` takes saliency maps pred Tensor[N, H, W] (or [N, 1, H, W]) in [0, 1] and binary masks
    target of the same shape (nonzero = salient). ``compute()`` returns:

    - ``mae``: the mean over images of mean ``|pred - target|``.
    - ``max_f``: each map is quantised to 256 levels (floor(255 * pred)) and binarised at every threshold
      t = 0..255 (pred >= t); per image and threshold, precision P = TP / (TP + FP), recall R = TP / ``|target|``
      (0 where undefined) and F = (1 + b2) P R / (b2 P + R) with b2 = 0.3 (0 where P = R = 0); F is averaged over
      images per threshold, and ``max_f`` is its largest value (``f_curve`` holds the 256 averages).
    - ``s_measure``: S = 0.5 S_object + 0.5 S_region, clipped at 0; 1 - mean(pred) for an empty mask and mean(pred)
      for a full one; averaged over images. S_object compares the foreground and background distributions
      (2 x / (x^2 + 1 + sigma + eps) per side, weighted by the mask's area); S_region splits both maps at the mask's
      centroid into four quadrants and sums their SSIM weighted by area.

    Args:
        min_max_normalise (bool): rescale each map to [0, 1] by its own min and max first (unless constant), as
            PySODMetrics does; off by default, so that the numbers describe the maps given.
    """

    BETA2 = 0.3
    EPS = 2.220446049250313e-16  # numpy's float64 epsilon, the reference code's _EPS

    def __init__(self, min_max_normalise: bool = False) -> None:
        self.min_max_normalise = min_max_normalise
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mae_sum = 0.0
        self.s_sum = 0.0
        self.f_sum = torch.zeros(256, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() == 4 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f"SaliencyMetrics.update: pred and target must have one shape, [N, H, W] or "
                f"[N, 1, H, W], got {list(pred.shape)} and {list(target.shape)}"
            )
        if not pred.is_floating_point() or pred.numel() and not bool(((pred >= 0) & (pred <= 1)).all()):
            raise ValueError("SaliencyMetrics.update: pred must be floating point in [0, 1]")
        for saliency, mask in zip(pred.double().cpu(), target.cpu() != 0):
            if self.min_max_normalise and saliency.max() > saliency.min():
                saliency = (saliency - saliency.min()) / (saliency.max() - saliency.min())
            self.count += 1
            self.mae_sum += (saliency - mask.double()).abs().mean().item()
            self.f_sum += self._f_curve(saliency, mask)
            self.s_sum += self._s_measure(saliency, mask)

    def compute(self) -> Dict[str, object]:
        if self.count == 0:
            raise ValueError("SaliencyMetrics.compute: no images were added")
        f_curve = self.f_sum / self.count
        return {
            "mae": self.mae_sum / self.count,
            "max_f": f_curve.max().item(),
            "s_measure": self.s_sum / self.count,
            "f_curve": f_curve,
        }

    @classmethod
    def _f_curve(cls, saliency: Tensor, mask: Tensor) -> Tensor:
        levels = torch.floor(saliency * 255).long()
        # Pixels at or above threshold t: reversed cumulative histograms of the salient and the other pixels.
        salient = torch.bincount(levels[mask], minlength=256).flip(0).cumsum(0).flip(0).double()
        other = torch.bincount(levels[~mask], minlength=256).flip(0).cumsum(0).flip(0).double()
        predicted = salient + other
        precision = torch.where(predicted > 0, salient / predicted.clamp_min(1), torch.zeros_like(salient))
        positives = mask.sum().item()
        recall = salient / positives if positives else torch.zeros_like(salient)
        denominator = cls.BETA2 * precision + recall
        return torch.where(
            denominator > 0,
            (1 + cls.BETA2) * precision * recall / denominator.clamp_min(cls.EPS),
            torch.zeros_like(denominator),
        )

    @classmethod
    def _s_measure(cls, saliency: Tensor, mask: Tensor) -> float:
        area = mask.double().mean().item()
        if area == 0:
            return 1 - saliency.mean().item()
        if area == 1:
            return saliency.mean().item()
        score = 0.5 * cls._s_object(saliency, mask, area) + 0.5 * cls._s_region(saliency, mask)
        return max(0.0, score)

    @classmethod
    def _object_score(cls, values: Tensor) -> float:
        mean = values.mean().item()
        sigma = values.std().item() if values.numel() > 1 else 0.0  # ddof = 1
        return 2 * mean / (mean * mean + 1 + sigma + cls.EPS)

    @classmethod
    def _s_object(cls, saliency: Tensor, mask: Tensor, area: float) -> float:
        return area * cls._object_score(saliency[mask]) + (1 - area) * cls._object_score(1 - saliency[~mask])

    @classmethod
    def _ssim(cls, saliency: Tensor, mask: Tensor) -> float:
        count = saliency.numel()
        if count == 0:
            return 0.0
        x, y = saliency.mean(), mask.mean()
        dof = max(count - 1, 1)
        sigma_x = ((saliency - x) ** 2).sum() / dof
        sigma_y = ((mask - y) ** 2).sum() / dof
        sigma_xy = ((saliency - x) * (mask - y)).sum() / dof
        alpha = (4 * x * y * sigma_xy).item()
        beta = ((x * x + y * y) * (sigma_x + sigma_y)).item()
        if alpha != 0:
            return alpha / (beta + cls.EPS)
        return 1.0 if beta == 0 else 0.0

    @classmethod
    def _s_region(cls, saliency: Tensor, mask: Tensor) -> float:
        height, width = mask.shape
        rows, cols = torch.nonzero(mask, as_tuple=True)
        # The centroid, rounded, + 1: the reference code's split (its first quadrant holds rows and columns < y, x).
        y = int(torch.round(rows.double().mean()).item()) + 1
        x = int(torch.round(cols.double().mean()).item()) + 1
        mask = mask.double()
        score = 0.0
        for rows_slice, cols_slice in (
            (slice(0, y), slice(0, x)),
            (slice(0, y), slice(x, width)),
            (slice(y, height), slice(0, x)),
            (slice(y, height), slice(x, width)),
        ):
            part = mask[rows_slice, cols_slice]
            weight = part.numel() / (height * width)
            score += weight * cls._ssim(saliency[rows_slice, cols_slice], part)
        return score
