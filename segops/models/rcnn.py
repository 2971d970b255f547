"""R-CNN heads on segops' RoI ops: Fast R-CNN's box head (RoIPool, Girshick 2015), Mask R-CNN's mask head
(RoIAlign, He et al. 2017), and torchvision's own Mask R-CNN and Keypoint R-CNN running their RoI pooling on
segops.multi_scale_roi_align, Mask R-CNN cropping its mask targets with segops.roi_align (SegopsRoIHeads)."""

import os
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import ResNet50_Weights, WeightsEnum
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    keypointrcnn_inference,
    keypointrcnn_loss,
    maskrcnn_inference,
)
from torchvision.ops import FrozenBatchNorm2d, poolers

from segops.ops.roi_align import RoIAlign, roi_align
from segops.ops.roi_pool import RoIPool

# What weights_backbone takes: torchvision's enum (torchvision downloads it), or a torchvision ResNet-50 state_dict
# (or the file holding one: torch.save(torchvision.models.resnet50(...).state_dict(), path)), read locally.
BackboneWeights = Optional[Union[ResNet50_Weights, str, os.PathLike, Dict[str, Tensor]]]


class FastRCNNBoxHead(nn.Module):
    """RoI pooling of each box to 7x7 (RoIPool, as Fast R-CNN; or RoIAlign), two fully connected layers, class scores
    and per-class box deltas: features [N, C, H, W] and boxes [K, 5] (batch index, x1, y1, x2, y2, in image
    coordinates) -> (scores [K, num_classes], deltas [K, 4 * num_classes])."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_scale: float,
        resolution: int = 7,
        representation: int = 1024,
        pooling: str = "roi_pool",
    ):
        super().__init__()
        if pooling not in ("roi_pool", "roi_align"):
            raise ValueError(f"FastRCNNBoxHead: pooling must be 'roi_pool' or 'roi_align', got {pooling!r}")
        self.pool = (
            RoIPool(resolution, spatial_scale)
            if pooling == "roi_pool"
            else RoIAlign(resolution, spatial_scale, sampling_ratio=2, aligned=True)
        )
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, 4 * num_classes)

    def forward(self, features: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        x = torch.flatten(self.pool(features, boxes), 1)
        x = torch.relu(self.fc7(torch.relu(self.fc6(x))))
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNMaskHead(nn.Module):
    """Mask R-CNN's mask branch: RoIAlign to 14x14, four 3x3 convolutions (256, ReLU), a 2x2 up-convolution and a
    1x1 classifier: features [N, C, H, W], boxes [K, 5] -> mask logits [K, num_classes, 28, 28]."""

    def __init__(
        self, in_channels: int, num_classes: int, spatial_scale: float, resolution: int = 14, channels: int = 256
    ):
        super().__init__()
        self.pool = RoIAlign(resolution, spatial_scale, sampling_ratio=2, aligned=True)
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True))
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        return self.predictor(self.upsample(self.convs(self.pool(features, boxes))))


class SegopsMultiScaleRoIAlign(poolers.MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (FPN level per box, torchvision's arithmetic: aligned=False) on
    segops.multi_scale_roi_align: every level in one pass."""

    def features_and_rois(
        self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tuple[List[Tensor], Tensor]:
        """torchvision's preparation: the named maps, their scales (inferred once from the sizes) and rois [K, 5]."""
        features = poolers._filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = poolers._setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        return features, poolers._convert_to_roi_format(boxes)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        # Written for TorchScript too: a scripted torchvision detector keeps this module scriptable.
        features, rois = self.features_and_rois(x, boxes, image_shapes)
        scales, map_levels = self.scales, self.map_levels
        if scales is None or map_levels is None:
            raise ValueError("SegopsMultiScaleRoIAlign: scales and map_levels must be set up by features_and_rois")
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            levels = map_levels(boxes).to(torch.int64)
        return torch.ops.segops.multi_scale_roi_align(
            features,
            rois,
            levels,
            [float(s) for s in scales],
            self.output_size[0],
            self.output_size[1],
            self.sampling_ratio,
            False,
        )


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, M: int) -> Tensor:
    """Mask R-CNN's mask targets, as torchvision's function of the same name computes them but on segops.roi_align
    (torchvision's settings: aligned=False, adaptive sampling; equal bit for bit): each proposal's matched
    ground-truth mask cropped to the proposal and resampled to M x M.

    Args:
        gt_masks (Tensor[G, H, W]): one image's ground-truth masks (any dtype; 0/1 values).
        boxes (Tensor[P, 4]): its positive proposals (x1, y1, x2, y2), in image coordinates.
        matched_idxs (Tensor[P]): the ground-truth index each proposal matched.
        M (int): the mask logits' size.

    Returns:
        Tensor[P, M, M] in boxes' dtype: the soft targets.
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, [M, M], 1.0)[:, 0]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    gt_labels: List[Tensor],
    mask_matched_idxs: List[Tensor],
) -> Tensor:
    """Mask R-CNN's mask loss (torchvision's maskrcnn_loss, its targets cropped by project_masks_on_boxes): the
    mean per-pixel binary cross-entropy of each positive proposal's logits for its ground-truth class.

    Args:
        mask_logits (Tensor[P, num_classes, M, M]): the mask predictor's logits for all images' positives.
        proposals (List[Tensor[P_i, 4]]): the positive proposals per image (P = sum of P_i).
        gt_masks (List[Tensor[G_i, H, W]]), gt_labels (List[Tensor[G_i]]): the targets per image.
        mask_matched_idxs (List[Tensor[P_i]]): the ground-truth index each positive matched.

    Returns:
        Tensor[]: the loss (0, still connected to mask_logits, when there are no positives).
    """
    discretization_size = mask_logits.shape[-1]
    labels = [gt_label[idxs] for gt_label, idxs in zip(gt_labels, mask_matched_idxs)]
    mask_targets = [
        project_masks_on_boxes(m, p, i, discretization_size) for m, p, i in zip(gt_masks, proposals, mask_matched_idxs)
    ]
    all_labels = torch.cat(labels, dim=0)
    all_targets = torch.cat(mask_targets, dim=0)
    if all_targets.numel() == 0:  # binary_cross_entropy_with_logits' mean is NaN on no elements
        return mask_logits.sum() * 0
    index = torch.arange(all_labels.shape[0], device=all_labels.device)
    return F.binary_cross_entropy_with_logits(mask_logits[index, all_labels], all_targets)


class SegopsRoIHeads(RoIHeads):
    """torchvision's RoIHeads (the box, mask and keypoint branches of Faster, Mask and Keypoint R-CNN after the RPN)
    with Mask R-CNN's training targets cropped by segops.roi_align: its forward is torchvision's with
    maskrcnn_loss in place of torchvision's (equal bit for bit), and it scripts as torchvision's does. Build one
    from a model's heads with `from_roi_heads` (use_segops_roi_align does), or as torchvision's RoIHeads."""

    __annotations__ = dict(RoIHeads.__annotations__)  # TorchScript's types for box_coder, proposal_matcher, ...

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads) -> "SegopsRoIHeads":
        """A SegopsRoIHeads sharing `heads`' submodules, matcher, sampler and box coder (so every setting, those
        torchvision's constructor does not take included), in `heads`' training mode."""
        if not isinstance(heads, RoIHeads):
            raise TypeError(
                f"SegopsRoIHeads.from_roi_heads: heads must be a torchvision RoIHeads, got {type(heads).__name__}"
            )
        new = cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            heads.mask_roi_pool,
            heads.mask_head,
            heads.mask_predictor,
            heads.keypoint_roi_pool,
            heads.keypoint_head,
            heads.keypoint_predictor,
        )
        new.proposal_matcher, new.fg_bg_sampler = heads.proposal_matcher, heads.fg_bg_sampler
        new.box_coder = heads.box_coder
        return new.train(heads.training)

    def positives(
        self, proposals: List[Tensor], labels: List[Tensor], matched_idxs: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Training: the sampled proposals labelled foreground [P_i, 4] and their ground-truth indices [P_i]."""
        positive_proposals: List[Tensor] = []
        positive_matched_idxs: List[Tensor] = []
        for proposals_in_image, labels_in_image, matched_in_image in zip(proposals, labels, matched_idxs):
            positive = torch.where(labels_in_image > 0)[0]
            positive_proposals.append(proposals_in_image[positive])
            positive_matched_idxs.append(matched_in_image[positive])
        return positive_proposals, positive_matched_idxs

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """torchvision's RoIHeads.forward, the mask loss segops' maskrcnn_loss.

        Args:
            features (Dict[str, Tensor[N, C, H_l, W_l]]): the backbone's maps.
            proposals (List[Tensor[P_i, 4]]): the RPN's boxes per image (x1, y1, x2, y2).
            image_shapes (List[Tuple[int, int]]): each image's (H, W) after the model's transform.
            targets (List[Dict[str, Tensor]], training only): per image "boxes" Tensor[G_i, 4] (floating point),
                "labels" Tensor[G_i] (int64), and "masks" Tensor[G_i, H, W] (mask heads) or "keypoints"
                Tensor[G_i, K, 3] (float32, keypoint heads).

        Returns:
            (detections, losses): in evaluation, per image "boxes" Tensor[D, 4], "labels" Tensor[D], "scores"
            Tensor[D], with mask heads "masks" Tensor[D, 1, M, M] (probabilities of the box's class), with keypoint
            heads "keypoints" Tensor[D, K, 3] and "keypoints_scores" Tensor[D, K]; no losses. In training, no
            detections and the losses loss_classifier, loss_box_reg, loss_mask and loss_keypoint (their heads').
        """
        if targets is not None:
            for t in targets:
                floating_point_types = (torch.float, torch.double, torch.half)
                if t["boxes"].dtype not in floating_point_types:
                    raise TypeError(f"target boxes must of float type, instead got {t['boxes'].dtype}")
                if not t["labels"].dtype == torch.int64:
                    raise TypeError(f"target labels must of int64 type, instead got {t['labels'].dtype}")
                if self.has_keypoint():
                    if not t["keypoints"].dtype == torch.float32:
                        raise TypeError(f"target keypoints must of float type, instead got {t['keypoints'].dtype}")

        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        else:
            labels = None
            regression_targets = None
            matched_idxs = None

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        result: List[Dict[str, Tensor]] = []
        losses: Dict[str, Tensor] = {}
        if self.training:
            if labels is None or regression_targets is None:
                raise ValueError("SegopsRoIHeads: training needs the sampled labels and regression targets")
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            for i in range(len(boxes)):
                result.append({"boxes": boxes[i], "labels": labels[i], "scores": scores[i]})

        # The None checks stay in the conditions so that TorchScript compiles each branch only where it exists.
        if self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None:
            mask_proposals = [p["boxes"] for p in result]
            pos_matched_idxs: Optional[List[Tensor]] = None
            if self.training:
                if matched_idxs is None or labels is None:
                    raise ValueError("SegopsRoIHeads: training needs the sampled labels and matched indices")
                mask_proposals, pos_matched_idxs = self.positives(proposals, labels, matched_idxs)
            mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
            mask_logits = self.mask_predictor(mask_features)
            if self.training:
                if targets is None or pos_matched_idxs is None:
                    raise ValueError("SegopsRoIHeads: training needs targets")
                gt_masks = [t["masks"] for t in targets]
                gt_labels = [t["labels"] for t in targets]
                losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs)
            else:
                masks_probs = maskrcnn_inference(mask_logits, [r["labels"] for r in result])
                for mask_prob, r in zip(masks_probs, result):
                    r["masks"] = mask_prob

        if (
            self.keypoint_roi_pool is not None
            and self.keypoint_head is not None
            and self.keypoint_predictor is not None
        ):
            keypoint_proposals = [p["boxes"] for p in result]
            keypoint_matched_idxs: Optional[List[Tensor]] = None
            if self.training:
                if matched_idxs is None or labels is None:
                    raise ValueError("SegopsRoIHeads: training needs the sampled labels and matched indices")
                keypoint_proposals, keypoint_matched_idxs = self.positives(proposals, labels, matched_idxs)
            keypoint_features = self.keypoint_head(self.keypoint_roi_pool(features, keypoint_proposals, image_shapes))
            keypoint_logits = self.keypoint_predictor(keypoint_features)
            if self.training:
                if targets is None or keypoint_matched_idxs is None:
                    raise ValueError("SegopsRoIHeads: training needs targets")
                gt_keypoints = [t["keypoints"] for t in targets]
                losses["loss_keypoint"] = keypointrcnn_loss(
                    keypoint_logits, keypoint_proposals, gt_keypoints, keypoint_matched_idxs
                )
            else:
                keypoints_probs, keypoint_scores = keypointrcnn_inference(keypoint_logits, keypoint_proposals)
                for keypoint_prob, keypoint_score, r in zip(keypoints_probs, keypoint_scores, result):
                    r["keypoints"] = keypoint_prob
                    r["keypoints_scores"] = keypoint_score

        return result, losses


def use_segops_roi_align(model: nn.Module) -> nn.Module:
    """Makes a torchvision detection model (`maskrcnn_resnet50_fpn`, `keypointrcnn_resnet50_fpn`, or any model with
    a MultiScaleRoIAlign) run its RoI ops on segops: each MultiScaleRoIAlign in it (the box head's, and the mask
    head's or the keypoint head's) becomes a SegopsMultiScaleRoIAlign with the same settings (every FPN level
    pooled in one segops.multi_scale_roi_align pass), and each RoIHeads a SegopsRoIHeads sharing its modules (Mask
    R-CNN's training targets cropped by segops.roi_align; the keypoint branch's loss and inference torchvision's).
    Detections and training losses equal torchvision's. Converts in place and returns the model (the new
    SegopsRoIHeads where `model` is itself a RoIHeads)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"use_segops_roi_align: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, RoIHeads) and not isinstance(model, SegopsRoIHeads):
        model = SegopsRoIHeads.from_roi_heads(model)
    for name, child in model.named_children():
        if isinstance(child, poolers.MultiScaleRoIAlign) and not isinstance(child, SegopsMultiScaleRoIAlign):
            replacement = SegopsMultiScaleRoIAlign(
                child.featmap_names,
                child.output_size,
                child.sampling_ratio,
                canonical_scale=child.canonical_scale,
                canonical_level=child.canonical_level,
            )
            setattr(model, name, replacement)
        else:
            if isinstance(child, RoIHeads) and not isinstance(child, SegopsRoIHeads):
                child = SegopsRoIHeads.from_roi_heads(child)
                setattr(model, name, child)
            use_segops_roi_align(child)
    return model


def _load_backbone_state(owner: str, weights_backbone: Union[str, os.PathLike, Dict[str, Tensor]]) -> Dict:
    if isinstance(weights_backbone, dict):
        return weights_backbone
    if not os.path.isfile(weights_backbone):
        raise FileNotFoundError(
            f"{owner}: weights_backbone must name a file holding a torchvision ResNet-50 state_dict, got "
            f"{weights_backbone!r}, which is not a file (torchvision's weights are ResNet50_Weights values, not names)"
        )
    state = torch.load(weights_backbone, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(
            f"{owner}: weights_backbone must hold a torchvision ResNet-50 state_dict, got a file holding a "
            f"{type(state).__name__}: {weights_backbone!r}"
        )
    return state


def _maskrcnn_resnet50_fpn(
    owner: str,
    num_classes: int,
    weights_backbone: BackboneWeights = None,
    trainable_backbone_layers: Optional[int] = None,
    **options: Any,
) -> MaskRCNN:
    """torchvision's Mask R-CNN builder (ResNet-50 FPN, no detector weights) for the segops models built on it, its
    backbone weights also read from a local state_dict. `owner` names the caller in error messages.

    weights_backbone: None (random backbone, BatchNorm, every layer trainable: torchvision's), a ResNet50_Weights
    value (passed to torchvision, which downloads it), or a torchvision ResNet-50 state_dict or its file, built as
    torchvision builds a given backbone: FrozenBatchNorm2d, and only the last `trainable_backbone_layers` (0..5,
    default 3) of layer4, layer3, layer2, layer1 and conv1 (with bn1) trainable. options: maskrcnn_resnet50_fpn's.
    """
    if trainable_backbone_layers is not None and (
        isinstance(trainable_backbone_layers, bool)
        or not isinstance(trainable_backbone_layers, int)
        or not 0 <= trainable_backbone_layers <= 5
    ):
        raise ValueError(
            f"{owner}: trainable_backbone_layers must be None or an int in [0, 5], got {trainable_backbone_layers!r}"
        )
    if weights_backbone is None or isinstance(weights_backbone, ResNet50_Weights):
        return torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=weights_backbone,
            num_classes=num_classes,
            trainable_backbone_layers=trainable_backbone_layers,
            **options,
        )
    if isinstance(weights_backbone, WeightsEnum) or not isinstance(weights_backbone, (str, os.PathLike, dict)):
        raise TypeError(
            f"{owner}: weights_backbone must be None, a torchvision ResNet50_Weights value, or a torchvision ResNet-50 "
            f"state_dict or the path of its file, got {weights_backbone!r}"
        )
    state = _load_backbone_state(owner, weights_backbone)
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    try:
        resnet.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{owner}: weights_backbone must be a torchvision ResNet-50 state_dict: {error}") from None
    options.pop("progress", None)  # the download's progress bar: nothing is downloaded here
    layers = 3 if trainable_backbone_layers is None else trainable_backbone_layers
    return MaskRCNN(_resnet_fpn_extractor(resnet, layers), num_classes=num_classes, **options)
