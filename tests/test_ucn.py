"""Unseen object instance segmentation (UCN): the two losses against plain loops over their published formulas,
von Mises-Fisher mean shift recovering planted clusters, and the embedding network."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import segops.models as models
from segops.cluster import mean_shift
from segops.losses import inter_cluster_loss, intra_cluster_loss


def _case(seed=0, n=2, d=4, size=(5, 6)):
    g = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(n, d, *size, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (n, *size), generator=g)
    labels[1] = torch.where(labels[1] == 2, 7, labels[1])  # object ids need not be consecutive
    return embeddings, labels


def _objects(embeddings, labels):
    """Per image: {object id: (its pixels' embeddings as a list, their spherical mean)} by plain loops."""
    for image, image_labels in zip(embeddings, labels):
        groups = {}
        for y in range(image_labels.shape[0]):
            for x in range(image_labels.shape[1]):
                groups.setdefault(int(image_labels[y, x]), []).append(image[:, y, x])
        yield {k: (v, F.normalize(sum(v), dim=0)) for k, v in groups.items()}


def _d(a, b):
    return (1 - torch.dot(a, b)) / 2


@pytest.mark.parametrize("alpha", [0.02, 0.3])
def test_intra_cluster_loss_is_the_published_formula(alpha):
    embeddings, labels = _case()
    per_image = []
    for objects in _objects(embeddings, labels):
        terms = []
        for pixels, mean in objects.values():
            hinged = [_d(mean, x) for x in pixels if _d(mean, x) - alpha >= 0]
            terms.append(sum(v**2 for v in hinged) / len(hinged) if hinged else torch.tensor(0.0, dtype=torch.float64))
        per_image.append(sum(terms) / len(terms))
    expected = sum(per_image) / len(per_image)
    torch.testing.assert_close(intra_cluster_loss(embeddings, labels, alpha), expected)


@pytest.mark.parametrize("delta", [0.5, 0.8])
def test_inter_cluster_loss_is_the_published_formula(delta):
    embeddings, labels = _case(1)
    per_image = []
    for objects in _objects(embeddings, labels):
        means = [mean for _, mean in objects.values()]
        pairs = list(itertools.combinations(means, 2))
        per_image.append(sum(max(0.0, delta - _d(a, b)) ** 2 for a, b in pairs) / len(pairs))
    expected = torch.as_tensor(sum(per_image) / len(per_image), dtype=torch.float64)
    torch.testing.assert_close(inter_cluster_loss(embeddings, labels, delta), expected)


def test_losses_vanish_on_ideal_embeddings_and_are_differentiable():
    # Each object's pixels on one of three orthogonal directions: within the margin, and d(mu, mu') = 0.5 = delta.
    labels = torch.randint(0, 3, (1, 4, 5), generator=torch.Generator().manual_seed(0))
    embeddings = F.one_hot(labels, 3).permute(0, 3, 1, 2).double()
    assert intra_cluster_loss(embeddings, labels) == 0 and inter_cluster_loss(embeddings, labels) == 0
    raw, labels = _case(2)
    raw.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: intra_cluster_loss(F.normalize(e, dim=1), labels, 0.1), (raw,))
    assert torch.autograd.gradcheck(lambda e: inter_cluster_loss(F.normalize(e, dim=1), labels, 0.9), (raw,))
    # Ignored pixels take no part: no gradient reaches them, and the others' loss does not see them.
    marked = torch.where(labels == 1, 255, labels)
    for loss in (intra_cluster_loss, inter_cluster_loss):
        (grad,) = torch.autograd.grad(loss(F.normalize(raw, dim=1), marked, 0.3, ignore_index=255), raw)
        assert (grad.permute(0, 2, 3, 1)[labels == 1] == 0).all() and grad.abs().sum() > 0


def test_mean_shift_recovers_planted_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    truth = torch.arange(5).repeat_interleave(200)
    points = F.normalize(centres[truth] + 0.1 * torch.randn(1000, 8, generator=g), dim=1)
    labels, modes = mean_shift(points, generator=g)
    assert len(modes) == 5
    # A one-to-one match of clusters and labels, every point labelled as its cluster.
    assert len({(int(t), int(label)) for t, label in zip(truth, labels)}) == 5
    assert all(F.cosine_similarity(modes[int(labels[truth == k][0])], centres[k], dim=0) > 0.99 for k in range(5))
    image_labels, _ = mean_shift(points.t().reshape(8, 25, 40), generator=torch.Generator().manual_seed(0))
    assert image_labels.shape == (25, 40)


def test_mean_shift_errors():
    with pytest.raises(ValueError, match=r"embeddings must be a non-empty Tensor\[P, D\]"):
        mean_shift(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="kappa must be > 0"):
        mean_shift(torch.randn(5, 3), kappa=0.0)


def test_ucn_embeds_on_the_unit_sphere_and_learns_to_separate_objects():
    torch.manual_seed(0)
    model = models.ucn(embedding_dim=8, base_width=8)
    images = torch.rand(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.int64)
    labels[:, 4:14, 4:14], labels[:, 18:30, 10:28] = 1, 2
    pixels = images.permute(0, 2, 3, 1)  # a view: colour the objects (colour stands for objectness here)
    pixels[labels == 1] = torch.tensor([0.9, 0.1, 0.1])
    pixels[labels == 2] = torch.tensor([0.1, 0.1, 0.9])
    embeddings = model(images)
    assert embeddings.shape == (2, 8, 32, 32)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2, 32, 32))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        embeddings = model(images)
        loss = intra_cluster_loss(embeddings, labels) + inter_cluster_loss(embeddings, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    segmented = model.eval().segment(images, generator=torch.Generator().manual_seed(0))
    assert segmented.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="embedding_dim must be an int >= 2, got 1"):
        models.ucn(embedding_dim=1)
