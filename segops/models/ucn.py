"""Unseen object clustering (UCN; Xiang, Xie, Mousavian and Fox 2020): an embedding network maps every pixel to a
unit vector, trained with segops.losses.intra_cluster_loss and inter_cluster_loss so that pixels of one object
cluster and objects separate, whatever the objects are; segops.cluster.mean_shift turns the embeddings into
instance labels."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segops.models._checks import check_int as _check_int
from segops.cluster import mean_shift
from segops.models.unet import UNet


class UCN(nn.Module):
    """images [N, in_channels, H, W] (RGB, or RGB-D with in_channels 4 as in the paper) -> unit-norm pixel
    embeddings [N, D, H, W]. The body is segops' U-Net with batch norm and D output channels (the paper's is a
    ResNet-34 encoder-decoder; any encoder-decoder serves: the losses define UCN)."""

    def __init__(self, embedding_dim: int = 64, base_width: int = 64, depth: int = 4, in_channels: int = 3):
        super().__init__()
        _check_int("UCN", "embedding_dim", embedding_dim, 2)
        self.body = UNet(embedding_dim, base_width, depth, in_channels, batch_norm=True)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.body(images)["out"], dim=1)

    @torch.no_grad()
    def segment(self, images: Tensor, **mean_shift_options) -> Tensor:
        """Instance labels [N, H, W] (int64, 0 .. M-1 per image) by mean shift on each image's embeddings."""
        return torch.stack([mean_shift(embeddings, **mean_shift_options)[0] for embeddings in self(images)])


def ucn(embedding_dim: int = 64, base_width: int = 64, in_channels: int = 3) -> UCN:
    """UCN's embedding network with 64-dimensional embeddings (the paper's) on a U-Net of the given width."""
    return UCN(embedding_dim, base_width, in_channels=in_channels)
