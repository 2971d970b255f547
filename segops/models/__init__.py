"""Segmentation networks written thinly on segops' operators; no builder downloads anything. Semantic segmentation
builders take `num_classes` and `in_channels` (but crfasrnn, RGB) and map images Tensor[N, in_channels, H, W] (any
H, W >= 64; U-Net with padding="valid", the sizes unet_valid_sizes lists, or any through unet_tile_inference) to
torchvision's {"out": logits Tensor[N, K, H, W]} (plus "aux" for PSPNet's auxiliary head); the others say what they
return: video (deep_feature_flow), saliency maps (dcl, basnet, poolnet), image labels and class activation maps
(cam), pixel embeddings (ucn), detections (panet, use_segops_roi_align) and panoptic maps (panoptic_fpn).
use_segops_dilated_conv runs any model's dilated convolutions (torchvision's DeepLabV3 and FCN) on segops."""

from segops.models.cam import CAMClassifier, cam
from segops.models.crfasrnn import CRFasRNN, crfasrnn
from segops.models.deeplab import ASPP, DeepLabV2, DeepLabV3, deeplabv2, deeplabv3
from segops.models.dff import DeepFeatureFlow, FixedIntervalScheduler, FlowNet, deep_feature_flow
from segops.models.fcn import FCN, fcn8s, fcn16s, fcn32s, load_vgg16_backbone
from segops.models.rcnn import (
    FastRCNNBoxHead,
    MaskRCNNMaskHead,
    SegopsMultiScaleRoIAlign,
    SegopsRoIHeads,
    use_segops_roi_align,
)
from segops.models.panet import (
    AdaptiveBoxHead,
    AdaptiveFeaturePooling,
    AdaptiveMaskHead,
    BottomUpPath,
    FusedMaskPredictor,
    panet,
)
from segops.models.panoptic import PanopticFPN, SemanticFPNHead, panoptic_fpn, panoptic_merge
from segops.models.pspnet import PSPNet, PyramidPooling, pspnet
from segops.models.rfcn import FCISHead, RFCNHead
from segops.models.resnet import DilatedResNet
from segops.models.saliency import (
    BASNet,
    DCL,
    PoolNet,
    SegmentPooling,
    basnet,
    basnet_loss,
    dcl,
    grid_segments,
    poolnet,
)
from segops.models.segnet import DeconvNet, SegNet, deconvnet, load_vgg16_bn_encoder, segnet
from segops.models.swap import use_segops_dilated_conv
from segops.models.ucn import UCN, ucn
from segops.models.unet import UNet, unet, unet_tile_inference, unet_valid_sizes

__all__ = [
    "AdaptiveBoxHead",
    "AdaptiveFeaturePooling",
    "AdaptiveMaskHead",
    "ASPP",
    "BottomUpPath",
    "panet",
    "BASNet",
    "basnet",
    "basnet_loss",
    "cam",
    "CAMClassifier",
    "CRFasRNN",
    "crfasrnn",
    "DCL",
    "dcl",
    "DeconvNet",
    "deconvnet",
    "deep_feature_flow",
    "DeepFeatureFlow",
    "DeepLabV2",
    "deeplabv2",
    "DeepLabV3",
    "deeplabv3",
    "DilatedResNet",
    "FastRCNNBoxHead",
    "FCISHead",
    "FCN",
    "fcn16s",
    "fcn32s",
    "fcn8s",
    "FixedIntervalScheduler",
    "FusedMaskPredictor",
    "grid_segments",
    "FlowNet",
    "load_vgg16_backbone",
    "load_vgg16_bn_encoder",
    "MaskRCNNMaskHead",
    "panoptic_fpn",
    "PanopticFPN",
    "panoptic_merge",
    "SemanticFPNHead",
    "PoolNet",
    "poolnet",
    "PSPNet",
    "pspnet",
    "PyramidPooling",
    "RFCNHead",
    "SegmentPooling",
    "SegNet",
    "segnet",
    "SegopsMultiScaleRoIAlign",
    "SegopsRoIHeads",
    "UCN",
    "ucn",
    "UNet",
    "unet",
    "unet_tile_inference",
    "unet_valid_sizes",
    "use_segops_dilated_conv",
    "use_segops_roi_align",
]
