"""Segmentation networks written thinly on segops' operators. Every builder takes `num_classes`, downloads nothing,
and returns a module mapping images Tensor[N, 3, H, W] (any H, W >= 64) to logits Tensor[N, K, H, W]."""

from segops.models.fcn import FCN, fcn8s, fcn16s, fcn32s, load_vgg16_backbone
from segops.models.segnet import SegNet, segnet
from segops.models.unet import UNet, unet

__all__ = ["FCN", "fcn8s", "fcn16s", "fcn32s", "load_vgg16_backbone", "SegNet", "segnet", "UNet", "unet"]
