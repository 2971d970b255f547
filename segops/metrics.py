"""Metrics of semantic segmentation: pixel accuracy, mean accuracy, mean IU and frequency-weighted IU exactly as
Long et al. (2015, "Fully Convolutional Networks for Semantic Segmentation", section 5) define them, from a
confusion matrix accumulated over batches with one bincount and mergeable across processes."""

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
