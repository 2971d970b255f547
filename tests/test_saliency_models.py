"""Saliency networks (segops.models.dcl, basnet, poolnet): probabilities at the input size, the papers' structure
where it matters (BASNet's atrous bridge on segops, its side outputs and residual refinement, DCL's fused side
stream and CRF, PoolNet's guidance and aggregation), BASNet's deep-supervision loss, and a few steps that learn."""

import pytest
import torch

import segops
import segops.models as models
from segops.losses import hybrid_loss


@pytest.mark.parametrize(
    "build",
    [lambda: models.dcl(base_width=8), lambda: models.basnet(width=16), lambda: models.poolnet(width=16)],
    ids=["dcl", "basnet", "poolnet"],
)
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_saliency_models_give_probabilities_at_the_input_size(build, size):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    saliency = out[0] if isinstance(out, tuple) else out
    assert saliency.shape == (2, 1, *size)
    assert ((saliency > 0) & (saliency < 1)).all()


def test_basnet_bridge_side_outputs_refinement_and_loss():
    torch.manual_seed(0)
    model = models.basnet(width=16).eval()
    assert sum(isinstance(m, segops.DilatedConv2d) for m in model.bridge.modules()) == 3
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        refined, sides = model(images)
        assert len(sides) == 6 and all(s.shape == (1, 1, 64, 80) for s in sides)
        # The refinement adds a residual to the coarse (last side) map's logits: without it, refined == coarse.
        model.refine.out.weight.zero_()
        model.refine.out.bias.zero_()
        unrefined, sides = model(images)
        torch.testing.assert_close(unrefined, sides[-1])
    target = (torch.rand(1, 1, 64, 80) > 0.5).float()
    outputs = (refined, sides)
    expected = hybrid_loss(refined, target) + sum(hybrid_loss(s, target) for s in sides)
    torch.testing.assert_close(models.basnet_loss(outputs, target), expected)


def test_basnet_learns():
    torch.manual_seed(0)
    model = models.basnet(width=16)
    target = torch.zeros(2, 1, 64, 64)
    target[0, :, 10:40, 8:30] = 1
    target[1, :, 30:60, 20:50] = 1
    images = torch.rand(2, 3, 64, 64) * 0.3 + 0.6 * target  # a brighter object on a noisy background
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = models.basnet_loss(model(images), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_dcl_fuses_five_sides_and_refines_with_the_dense_crf():
    torch.manual_seed(0)
    model = models.dcl(base_width=8, crf=True).eval()
    assert len(model.sides) == 5 and model.fuse.in_channels == 5 * 32
    images, rgb = torch.randn(1, 3, 64, 72), torch.rand(1, 3, 64, 72) * 255
    with torch.no_grad():
        plain = models.dcl(base_width=8).eval()
        plain.load_state_dict(model.state_dict())
        p = plain(images)
        logits = torch.cat([torch.log1p(-p.clamp(max=1 - 1e-6)), p.clamp_min(1e-6).log()], dim=1)
        torch.testing.assert_close(model(images, rgb), segops.dense_crf(logits, rgb)[:, 1:])
    assert torch.equal(model.train()(images), plain.train()(images))  # the CRF at evaluation only


def test_poolnet_guides_every_level():
    torch.manual_seed(0)
    model = models.poolnet(width=16).eval()
    assert len(model.fams) == 4 and model.ppm_bins == (1, 3, 5)
    images = torch.randn(1, 3, 64, 64)
    out = model(images)
    # The global guidance reaches the output through every level: its fusion layer gets gradient.
    out.sum().backward()
    assert model.ppm_fuse[0].weight.grad.abs().sum() > 0
