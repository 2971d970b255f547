"""CRF-as-RNN (Zheng et al. 2015): FCN-8s and a fully-connected CRF whose mean-field steps are network layers,
trained end to end: segops.DenseCRF with the paper's bandwidths, learned kernel weights and label compatibility,
5 steps in training and 10 at test."""

from typing import Dict, Optional

from torch import Tensor, nn

from segops.models._checks import check_int as _check_int
from segops.models.deeplab import unnormalise
from segops.models.fcn import Backbone, fcn8s
from segops.ops.dense_crf import DenseCRF

# Zheng et al.'s CRF-RNN: appearance kernel bandwidths theta_alpha 160 (pixels) and theta_beta 3 (colour units),
# smoothness theta_gamma 3; their released model starts the two kernel weights at 5 (appearance) and 3 (smoothness).
CRF_AS_RNN = dict(
    smoothness_sxy=3.0,
    smoothness_weight=3.0,
    appearance_sxy=160.0,
    appearance_srgb=3.0,
    appearance_weight=5.0,
    learn_compatibility=True,
)


class CRFasRNN(nn.Module):
    """FCN-8s, then the CRF: images [N, 3, H, W] (ImageNet-normalised) -> {"out": log of the CRF's label marginals
    [N, K, H, W]} (logits whose softmax is the prediction). The CRF needs the RGB image: pass it as `rgb`
    ([N, 3, H, W], 0..255), or the images are un-normalised. `crf.num_iters` steps in training, `crf.test_iters`
    in eval mode."""

    def __init__(
        self,
        num_classes: int,
        backbone: Backbone = None,
        base_width: int = 64,
        train_iters: int = 5,
        test_iters: int = 10,
    ):
        super().__init__()
        _check_int("CRFasRNN", "num_classes", num_classes, 2, " (the CRF's labels)")
        self.fcn = fcn8s(num_classes, backbone, base_width=base_width)
        self.crf = DenseCRF(num_classes, num_iters=train_iters, test_iters=test_iters, **CRF_AS_RNN)

    def forward(self, images: Tensor, rgb: Optional[Tensor] = None) -> Dict[str, Tensor]:
        logits = self.fcn(images)["out"]
        rgb = rgb if rgb is not None else unnormalise(images)
        return {"out": self.crf(logits, rgb).clamp_min(1e-12).log()}


def crfasrnn(num_classes: int, backbone: Backbone = None, base_width: int = 64) -> CRFasRNN:
    """CRF-as-RNN as Zheng et al. built it (FCN-8s on VGG16; backbone: torchvision vgg16 weights, a state_dict or
    its file)."""
    return CRFasRNN(num_classes, backbone, base_width)
