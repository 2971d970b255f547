"""Class activation mapping (Zhou, Khosla, Lapedriza, Oliva and Torralba 2016): a classifier trained on image labels
only, whose global average pooling lets its last linear layer be read back onto the feature maps as per-class
localisation maps, the seed of weakly supervised segmentation."""

from torch import Tensor, nn

from segops.models._checks import check_int as _check_int
from segops.models.resnet import DilatedResNet, Weights
from segops.pooling import class_activation_maps, global_avg_pool


class CAMClassifier(nn.Module):
    """features = body(images) [N, D, h, w]; logits = Linear(global_avg_pool(features)) [N, K];
    ``class_activation_maps(images)`` -> [N, K, H, W], the classifier applied at every position and upsampled to the
    images, whose mean over positions (before upsampling) is the logits.

    Args:
        num_classes: K.
        body: any module [N, 3, H, W] -> [N, D, h, w]; `channels` its D.
    """

    def __init__(self, num_classes: int, body: nn.Module, channels: int):
        super().__init__()
        _check_int("CAMClassifier", "num_classes", num_classes)
        self.body = body
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(global_avg_pool(self.body(images)))

    def class_activation_maps(self, images: Tensor, upsample: bool = True) -> Tensor:
        """[N, 3, H, W] -> [N, K, H, W] (or [N, K, h, w] with upsample=False)."""
        return class_activation_maps(
            self.body(images),
            self.classifier.weight,
            self.classifier.bias,
            size=images.shape[-2:] if upsample else None,
        )


def cam(
    num_classes: int, depth: int = 50, output_stride: int = 16, backbone: Weights = None, in_channels: int = 3
) -> CAMClassifier:
    """A CAM classifier on a dilated ResNet-50/101 (torchvision weights as for deeplabv2): output stride 16 gives
    14x14 maps for 224x224 images, the resolution for which Zhou et al. cut VGG16 and GoogLeNet short."""
    _check_int("cam", "num_classes", num_classes)
    return CAMClassifier(num_classes, DilatedResNet(depth, output_stride, backbone, in_channels), 2048)
