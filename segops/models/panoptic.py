"""Panoptic FPN (Kirillov, Girshick, He and Dollar 2019): a Mask R-CNN instance branch and a semantic branch on one
FPN, and the merging of their outputs into one panoptic map [H, W, 2] of (category id, instance id), which
segops.metrics.PanopticQuality scores."""

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.rcnn import BackboneWeights, _maskrcnn_resnet50_fpn, use_segops_roi_align

VOID = -1  # the category of unassigned pixels: neither a thing nor a stuff category


@torch.no_grad()
def panoptic_merge(
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    semantic: Tensor,
    stuffs: Sequence[int],
    overlap_threshold: float = 0.5,
    score_threshold: float = 0.5,
    stuff_min_area: int = 4096,
) -> Tensor:
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
    if (
        masks.dim() != 3
        or masks.shape[1:] != semantic.shape
        or scores.shape != (masks.shape[0],)
        or labels.shape != (masks.shape[0],)
    ):
        raise ValueError(
            f"panoptic_merge: masks must be [M, H, W], scores and labels [M] and semantic [H, W], got "
            f"{list(masks.shape)}, {list(scores.shape)}, {list(labels.shape)} and {list(semantic.shape)}"
        )
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


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: from each FPN level P2..P5 (strides 4 to 32), stages of a 3x3 convolution
    (128 channels), GroupNorm (32 groups) and ReLU, each followed by 2x bilinear upsampling, until stride 4 (P2:
    one stage, no upsampling; P3: one; P4: two; P5: three); the four summed, a 1x1 convolution to the classes, and
    4x bilinear upsampling: list of [N, C, H/4, W/4] ... -> logits [N, K, H, W] (H, W: 4x P2's size)."""

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128, levels: int = 4):
        super().__init__()

        def stage(inputs):
            return nn.Sequential(
                nn.Conv2d(inputs, channels, 3, padding=1, bias=False), nn.GroupNorm(32, channels), nn.ReLU(inplace=True)
            )

        self.levels = nn.ModuleList(
            [
                nn.ModuleList([stage(in_channels if i == 0 else channels) for i in range(max(1, level))])
                for level in range(levels)
            ]
        )
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[Tensor]) -> Tensor:
        sizes = [f.shape[-2:] for f in features]
        total = 0
        for level, (stages, x) in enumerate(zip(self.levels, features)):
            for step, layer in enumerate(stages):
                x = layer(x)
                if level > 0:  # up one level: to the next finer map's exact size (odd sizes included)
                    x = F.interpolate(x, size=sizes[level - 1 - step], mode="bilinear", align_corners=False)
            total = total + x
        logits = self.predictor(total)
        return F.interpolate(logits, size=(4 * sizes[0][0], 4 * sizes[0][1]), mode="bilinear", align_corners=False)


class PanopticFPN(nn.Module):
    """Panoptic FPN (Kirillov, Girshick, He and Dollar 2019): torchvision's Mask R-CNN (ResNet-50 FPN) with its RoI
    ops on segops (use_segops_roi_align: pooling with segops.multi_scale_roi_align, mask targets cropped by
    segops.roi_align), and the semantic branch (SemanticFPNHead) on the same FPN features.

    Categories: things 1..num_things (the detector's classes; 0 is its background), stuff num_things + 1 ..
    num_things + num_stuff. The semantic branch predicts num_stuff + 1 classes: 0 "a thing", s the stuff category
    num_things + s.

    - Training: ``model(images, targets)`` with torchvision's detection targets plus ``"semantic"`` per image
      ([H, W] int64: 0 for thing pixels, 1..num_stuff for stuff, 255 ignored) returns torchvision's losses and
      ``loss_semantic`` (per-pixel cross-entropy), to be summed.
    - Evaluation: ``model(images)`` returns one [H, W, 2] (category, instance) map per image, by panoptic_merge
      (stuff regions of fewer than ``stuff_min_area`` pixels dropped).

    Args:
        num_things (int), num_stuff (int): the category counts (>= 1 each).
        stuff_min_area (int): panoptic_merge's smallest stuff region, in pixels (>= 0).
        weights_backbone: None (random), a torchvision ResNet50_Weights value (torchvision downloads it), or a
            torchvision ResNet-50 state_dict or its file (read locally). Given weights, the backbone is built as
            torchvision's builder builds it: FrozenBatchNorm2d, and the first layers frozen.
        trainable_backbone_layers (int, optional): with weights, how many of layer4, layer3, layer2, layer1, conv1
            train (0..5, default 3), as torchvision's; without, all do.
        detector_options: torchvision's MaskRCNN options (min_size, max_size, thresholds, ...).

    Forward: images, a list of Tensor[3, H, W] in 0..1 (torchvision's detection convention) or a
    Tensor[N, 3, H, W]; targets as above, in training.
    """

    def __init__(
        self,
        num_things: int,
        num_stuff: int,
        stuff_min_area: int = 4096,
        *,
        weights_backbone: BackboneWeights = None,
        trainable_backbone_layers: Optional[int] = None,
        **detector_options,
    ):
        super().__init__()
        _check_int("PanopticFPN", "num_things", num_things)
        _check_int("PanopticFPN", "num_stuff", num_stuff)
        _check_int("PanopticFPN", "stuff_min_area", stuff_min_area, 0)
        detector = _maskrcnn_resnet50_fpn(
            "PanopticFPN", num_things + 1, weights_backbone, trainable_backbone_layers, **detector_options
        )
        self.detector = use_segops_roi_align(detector)
        self.semantic_head = SemanticFPNHead(num_stuff + 1)
        self.num_things, self.num_stuff, self.stuff_min_area = num_things, num_stuff, stuff_min_area

    def forward(self, images, targets=None):
        images = list(images)
        detector = self.detector
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, detector_targets = detector.transform(images, targets)
        features = detector.backbone(image_list.tensors)
        semantic = self.semantic_head([features[key] for key in ("0", "1", "2", "3")])
        semantic = F.interpolate(semantic, size=image_list.tensors.shape[-2:], mode="bilinear", align_corners=False)
        proposals, proposal_losses = detector.rpn(image_list, features, detector_targets)
        detections, detector_losses = detector.roi_heads(features, proposals, image_list.image_sizes, detector_targets)
        if self.training:
            semantic_target = torch.full(
                semantic.shape[:1] + semantic.shape[2:], 255, dtype=torch.int64, device=semantic.device
            )
            for index, (target, (height, width)) in enumerate(zip(targets, image_list.image_sizes)):
                resized = F.interpolate(target["semantic"][None, None].float(), size=(height, width), mode="nearest")
                semantic_target[index, :height, :width] = resized[0, 0].long()
            loss_semantic = F.cross_entropy(semantic, semantic_target, ignore_index=255)
            return {**detector_losses, **proposal_losses, "loss_semantic": loss_semantic}
        detections = detector.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        stuffs = list(range(self.num_things + 1, self.num_things + self.num_stuff + 1))
        panoptic = []
        for index, (found, size, (height, width)) in enumerate(zip(detections, original_sizes, image_list.image_sizes)):
            scores = F.interpolate(
                semantic[index : index + 1, :, :height, :width], size=size, mode="bilinear", align_corners=False
            )[0]
            labels = scores.argmax(0)
            category = torch.where(labels > 0, labels + self.num_things, torch.zeros_like(labels))
            panoptic.append(
                panoptic_merge(
                    found["masks"][:, 0],
                    found["scores"],
                    found["labels"],
                    category,
                    stuffs,
                    stuff_min_area=self.stuff_min_area,
                )
            )
        return panoptic


def panoptic_fpn(num_things: int, num_stuff: int, **options) -> PanopticFPN:
    """Panoptic FPN on a ResNet-50 FPN (COCO panoptic: 80 things, 53 stuff); options as PanopticFPN (stuff_min_area,
    weights_backbone, trainable_backbone_layers, torchvision's MaskRCNN options)."""
    return PanopticFPN(num_things, num_stuff, **options)
