"""Refines a deliberately noisy labelling of a real photograph with segops' dense CRF and saves the before/after
picture. Needs scikit-image (its coffee photograph; `pip install -r requirements-bench.txt`) and matplotlib.

    python examples/crf_refine.py [--output crf_refine.png]

The labelling: 4 colour clusters of the photograph (k-means on RGB, a few iterations, in torch) give the "true"
regions; the logits a network would output are those regions' one-hot scores, blurred and drowned in noise, so
their arg-max is a speckled, blocky labelling. The CRF (pydensecrf's default kernels, 10 steps) pulls it back to
the photograph's edges; the script prints the pixel accuracy against the clusters before and after.
"""

import argparse

import torch
import torch.nn.functional as F

import segops


def colour_clusters(image: torch.Tensor, clusters: int = 4, iterations: int = 10) -> torch.Tensor:
    """k-means labels [H, W] of an RGB image [3, H, W] (float 0..255), deterministic initialisation."""
    pixels = image.flatten(1).t()
    centres = pixels[torch.linspace(0, len(pixels) - 1, clusters).long()]
    for _ in range(iterations):
        labels = torch.cdist(pixels, centres).argmin(1)
        centres = torch.stack(
            [pixels[labels == k].mean(0) if (labels == k).any() else centres[k] for k in range(clusters)]
        )
    return labels.view(image.shape[1:])


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import skimage.data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="crf_refine.png")
    args = parser.parse_args()

    rgb = torch.from_numpy(skimage.data.coffee()[:375, :500].copy()).permute(2, 0, 1).contiguous()
    truth = colour_clusters(rgb.float())
    g = torch.Generator().manual_seed(0)
    one_hot = F.one_hot(truth, 4).permute(2, 0, 1)[None].float()
    coarse = F.interpolate(F.avg_pool2d(one_hot, 16), size=truth.shape, mode="bilinear", align_corners=False)
    logits = 3 * coarse + 1.2 * torch.randn(coarse.shape, generator=g)
    noisy = logits.argmax(1)[0]
    refined = segops.dense_crf(logits, rgb[None], num_iters=10).argmax(1)[0]
    before = (noisy == truth).float().mean().item()
    after = (refined == truth).float().mean().item()
    print(f"pixel accuracy against the colour regions: noisy {before:.3f}, after the dense CRF {after:.3f}")

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for axis, picture, title in zip(
        axes,
        [rgb.permute(1, 2, 0), truth, noisy, refined],
        ["photograph", "colour regions", f"noisy labels ({before:.1%})", f"dense CRF ({after:.1%})"],
    ):
        axis.imshow(picture, cmap=None if picture.dim() == 3 else "tab10", interpolation="nearest")
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
