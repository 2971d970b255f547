"""PANet (segops.models.panet): bottom-up path augmentation, adaptive feature pooling on
segops.multi_scale_roi_align(mode="all") fused by max, in torchvision's Mask R-CNN; inference and training."""

import pytest
import torch
import torch.nn.functional as F

import segops
import segops.models as models


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.panet(3, min_size=128, max_size=160, box_score_thresh=0.0)


def test_bottom_up_path_is_the_published_recurrence(model):
    path = model.backbone
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        pyramid = path.fpn_backbone(images)
        out = path(images)
        n = pyramid["0"]
        assert torch.equal(out["0"], n)
        for i, key in enumerate("123"):
            n = F.relu(path.fuse[i](F.relu(path.down[i](n)) + pyramid[key]))
            torch.testing.assert_close(out[key], n)
        torch.testing.assert_close(out["pool"], F.max_pool2d(n, 1, 2))
    assert [out[k].shape[-1] for k in "0123"] == [pyramid[k].shape[-1] for k in "0123"]


def test_adaptive_pooling_pools_every_box_from_every_level(model):
    pooling = model.roi_heads.box_roi_pool
    features = {k: torch.randn(2, 8, 32 // 2**i, 40 // 2**i) for i, k in enumerate("0123")}
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 90.0]]), torch.tensor([[0.0, 0.0, 120.0, 150.0], [30.0, 20, 50, 70]])]
    pooled = pooling(features, boxes, [(128, 160), (128, 160)])
    assert pooled.shape == (3, 4, 8, 7, 7)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for level, key in enumerate("0123"):
        expected = segops.roi_align(features[key], rois, 7, 0.25 / 2**level, 2, False)
        assert torch.equal(pooled[:, level], expected)


def test_heads_fuse_levels_by_max(model):
    head = model.roi_heads.box_head
    pooled = torch.randn(5, 4, 256, 7, 7)
    with torch.no_grad():
        per_level = torch.stack([F.relu(fc(pooled[:, level].flatten(1))) for level, fc in enumerate(head.fc6)], 1)
        torch.testing.assert_close(head(pooled), F.relu(head.fc7(per_level.max(1).values)))
    assert model.roi_heads.mask_head(torch.randn(2, 4, 256, 14, 14)).shape == (2, 256, 14, 14)


def test_panet_detects_and_trains(model):
    images = [torch.rand(3, 120, 150)]
    with torch.no_grad():
        detections = model.eval()(images)[0]
    assert detections["masks"].shape[1:] == (1, 120, 150) and len(detections["boxes"]) > 0
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 120, 150, dtype=torch.uint8),
        }
    ]
    targets[0]["masks"][0, 20:100, 10:80] = 1
    losses = model.train()(images, targets)
    sum(losses.values()).backward()
    assert all(fc.weight.grad is not None for fc in model.roi_heads.box_head.fc6)
    assert model.backbone.fuse[2].weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_head.first[0].weight.grad is not None
    model.eval()


def test_panet_errors():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.panet(1)
