"""Running existing models on segops' dilated convolution: torchvision's segmentation models (`deeplabv3_*`,
`fcn_*`), segmentation-models-pytorch's DeepLabV3, or any nn.Module, with their own (pretrained) parameters."""

from torch import nn

from segops.ops.dilated_conv import DilatedConv2d


def use_segops_dilated_conv(model: nn.Module) -> nn.Module:
    """Replaces every dilated ``nn.Conv2d`` in ``model`` (dilation > 1 on either axis) by a ``segops.DilatedConv2d``
    sharing its parameters (no copy: a checkpoint loaded before or after still applies), as
    ``use_segops_roi_align`` does for RoIAlign. Undilated convolutions stay ``nn.Conv2d``. Returns the model.

    Raises ValueError, naming the module, for a dilated convolution that DilatedConv2d cannot compute (a padding mode
    other than "zeros", or "same" padding that would be asymmetric)."""
    for name, child in model.named_modules():
        for attribute, conv in list(child.named_children()):
            if isinstance(conv, nn.Conv2d) and max(conv.dilation) > 1:
                try:
                    replacement = DilatedConv2d.from_conv(conv)
                except ValueError as error:
                    where = f"{name}.{attribute}" if name else attribute
                    raise ValueError(f"use_segops_dilated_conv: module {where!r}: {error}") from None
                setattr(child, attribute, replacement)
    return model
