"""Segmentation networks written thinly on segops' operators. Every builder takes `num_classes`, downloads nothing,
and returns a module mapping images Tensor[N, 3, H, W] (any H, W >= 64) to logits Tensor[N, K, H, W]."""

from segops.models.cam import CAMClassifier, cam
from segops.models.deeplab import ASPP, DeepLabV2, DeepLabV3, deeplabv2, deeplabv3
from segops.models.dff import DeepFeatureFlow, FixedIntervalScheduler, FlowNet, deep_feature_flow
from segops.models.fcn import FCN, fcn8s, fcn16s, fcn32s, load_vgg16_backbone
from segops.models.rcnn import FastRCNNBoxHead, MaskRCNNMaskHead, SegopsMultiScaleRoIAlign, use_segops_roi_align
from segops.models.pspnet import PSPNet, PyramidPooling, pspnet
from segops.models.resnet import DilatedResNet
from segops.models.saliency import BASNet, DCL, PoolNet, basnet, basnet_loss, dcl, poolnet
from segops.models.segnet import DeconvNet, SegNet, deconvnet, segnet
from segops.models.ucn import UCN, ucn
from segops.models.unet import UNet, unet

__all__ = ["BASNet", "DCL", "PoolNet", "basnet", "basnet_loss", "dcl", "poolnet", "CAMClassifier", "cam", "FastRCNNBoxHead", "MaskRCNNMaskHead", "SegopsMultiScaleRoIAlign", "use_segops_roi_align", "ASPP", "DeepLabV2", "DeepLabV3", "deeplabv2", "deeplabv3", "PSPNet", "PyramidPooling", "pspnet",
           "DilatedResNet", "DeepFeatureFlow", "FixedIntervalScheduler", "FlowNet", "deep_feature_flow", "FCN", "fcn8s", "fcn16s", "fcn32s", "load_vgg16_backbone", "DeconvNet", "SegNet", "deconvnet", "segnet", "UCN", "ucn", "UNet", "unet"]
