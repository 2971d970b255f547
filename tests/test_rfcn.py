"""segops.models.RFCNHead and FCISHead: output shapes for both box layouts, parameter counts by hand, the voting and
the inside/outside assembly against independent computations (torchvision's ops, windows summed by hand), the
papers' initialisation, FX and TorchScript, training that reaches every parameter and lowers the loss, and the
arguments' errors."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import segops.models as models

CLASSES, BINS, SCALE = 3, 3, 0.25


def _features(seed=0, batch=2, channels=8, size=24):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# (batch index, x1, y1, x2, y2) in image pixels (stride 4: 96 x 96 images), away from the right and bottom borders
# (torchvision's ps_roi_pool never reads the map's last row and column; segops' does) and at least 8 feature pixels
# wide (no empty bin).
BOXES = torch.tensor(
    [
        [0, 4.0, 6.0, 60.0, 52.0],
        [0, 30.0, 10.0, 80.0, 84.0],
        [1, 0.0, 0.0, 40.0, 36.0],
        [1, 18.0, 22.0, 86.0, 70.0],
        [1, 8.5, 40.25, 50.75, 86.0],
    ]
)


def _per_image(boxes, batch=2):
    return [boxes[boxes[:, 0] == n, 1:] for n in range(batch)]


def _rfcn(**options):
    torch.manual_seed(0)
    return models.RFCNHead(8, CLASSES, SCALE, bins=BINS, **options)


def _fcis(**options):
    torch.manual_seed(0)
    return models.FCISHead(8, CLASSES, SCALE, bins=BINS, mask_size=2 * BINS, **options)


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("pooling", ["ps_roi_pool", "ps_roi_align"])
@pytest.mark.parametrize("class_agnostic_boxes, box_outputs", [(True, 4), (False, 4 * CLASSES)])
def test_rfcn_shapes_for_tensor_and_list_boxes(pooling, class_agnostic_boxes, box_outputs):
    head = _rfcn(pooling=pooling, class_agnostic_boxes=class_agnostic_boxes, reduce_channels=6)
    features = _features()
    scores, deltas = head(features, BOXES)
    assert scores.shape == (5, CLASSES) and deltas.shape == (5, box_outputs)
    list_scores, list_deltas = head(features, _per_image(BOXES))
    torch.testing.assert_close(list_scores, scores, rtol=0, atol=0)
    torch.testing.assert_close(list_deltas, deltas, rtol=0, atol=0)
    assert [t.shape[0] for t in head(features, BOXES[:0])] == [0, 0]


@pytest.mark.parametrize("pooling", ["ps_roi_pool", "ps_roi_align"])
def test_fcis_shapes_for_tensor_and_list_boxes(pooling):
    head = _fcis(pooling=pooling, reduce_channels=6)
    features = _features()
    mask_logits, scores = head(features, BOXES)
    assert mask_logits.shape == (5, CLASSES, 2 * BINS, 2 * BINS) and scores.shape == (5, CLASSES)
    list_mask_logits, list_scores = head(features, _per_image(BOXES))
    torch.testing.assert_close(list_mask_logits, mask_logits, rtol=0, atol=0)
    torch.testing.assert_close(list_scores, scores, rtol=0, atol=0)
    # M need not be a multiple of k: 7 cells over 3 parts.
    odd = models.FCISHead(8, CLASSES, SCALE, bins=BINS, mask_size=7, pooling=pooling)
    assert odd(features, BOXES)[0].shape == (5, CLASSES, 7, 7)


# ---------------------------------------------------------------------------------------------------- parameters


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_as_the_papers_heads():
    # R-FCN on ResNet-101 (2048-d conv5 reduced to 1024), k = 7, PASCAL VOC's 20 classes + background:
    # reduce 2048 * 1024 + 1024 = 2,098,176; scores 1024 * 7^2 * 21 + 7^2 * 21 = 1029 * 1025 = 1,054,725;
    # class-agnostic boxes 4 * 7^2 * 1025 = 196 * 1025 = 200,900; class-specific 4 * 7^2 * 21 * 1025 = 4,218,900.
    assert _count(models.RFCNHead(2048, 21, 1 / 16, reduce_channels=1024)) == 2_098_176 + 1_054_725 + 200_900
    assert _count(models.RFCNHead(2048, 21, 1 / 16, reduce_channels=1024, class_agnostic_boxes=False)) == (
        2_098_176 + 1_054_725 + 4_218_900
    )
    # Without the reduction, on 16 channels, k = 3, 3 classes: (16 + 1) * 9 * 3 + (16 + 1) * 9 * 4 = 459 + 612.
    assert _count(models.RFCNHead(16, 3, 0.25, bins=3)) == 459 + 612
    # FCIS on the same features, COCO's 80 classes + background: 2 * 7^2 * 81 = 7938 maps, 7938 * 1025 = 8,136,450.
    assert _count(models.FCISHead(2048, 81, 1 / 16, reduce_channels=1024)) == 2_098_176 + 8_136_450
    # The assembly's index is a buffer outside the state_dict.
    assert list(models.FCISHead(16, 3, 0.25, bins=3).state_dict()) == ["score_maps.weight", "score_maps.bias"]


def test_initialised_as_the_authors_code():
    torch.manual_seed(0)
    head = models.RFCNHead(256, 21, 1 / 16, reduce_channels=128)
    for conv in (head.reduce[0], head.cls_maps, head.bbox_maps, _fcis(reduce_channels=128).score_maps):
        assert abs(conv.weight.std().item() - 0.01) < 0.001 and abs(conv.weight.mean().item()) < 0.001
        assert not conv.bias.any()


# ---------------------------------------------------------------------------------------------------- R-FCN voting


def test_rfcn_voting_equals_torchvision_pooling_of_its_own_maps():
    features = _features()
    for pooling, pool in [
        ("ps_roi_pool", lambda maps: torchvision.ops.ps_roi_pool(maps, BOXES, BINS, SCALE)),
        ("ps_roi_align", lambda maps: torchvision.ops.ps_roi_align(maps, BOXES, BINS, SCALE, 2)),
    ]:
        head = _rfcn(pooling=pooling, class_agnostic_boxes=False, reduce_channels=6)
        with torch.no_grad():  # values far from 0, so that the comparison means something
            for conv in (head.reduce[0], head.cls_maps, head.bbox_maps):
                conv.weight.normal_()
            x = head.reduce(features)
            expected = [pool(head.cls_maps(x)).mean(dim=(2, 3)), pool(head.bbox_maps(x)).mean(dim=(2, 3))]
            scores, deltas = head(features, BOXES)
        torch.testing.assert_close(scores, expected[0])
        torch.testing.assert_close(deltas, expected[1])


def test_rfcn_voting_by_hand():
    # spatial_scale 1 and a box of 2k x 2k pixels at integers: bin (i, j) is the 2 x 2 window at (y1 + 2i, x1 + 2j)
    # of class c's map (c k + i) k + j (ps_roi_pool's windows stop before the box's last pixel, x2 and y2).
    torch.manual_seed(0)
    head = models.RFCNHead(4, CLASSES, 1.0, bins=BINS)
    features = torch.randn(1, 4, 20, 20)
    x1, y1 = 5, 3
    box = torch.tensor([[0, x1, y1, x1 + 2 * BINS, y1 + 2 * BINS]], dtype=torch.float32)
    scores, deltas = head(features, box)
    with torch.no_grad():
        for maps, voted in [(head.cls_maps(features)[0], scores[0]), (head.bbox_maps(features)[0], deltas[0])]:
            for c in range(voted.shape[0]):
                bins = [
                    maps[(c * BINS + i) * BINS + j, y1 + 2 * i : y1 + 2 * i + 2, x1 + 2 * j : x1 + 2 * j + 2].mean()
                    for i in range(BINS)
                    for j in range(BINS)
                ]
                torch.testing.assert_close(voted[c], torch.stack(bins).mean())


# ---------------------------------------------------------------------------------------------------- FCIS assembly


def _inside_outside(assembled):
    inside, outside = assembled.unflatten(1, (CLASSES, 2)).unbind(2)  # map 2c + 0 is inside, 2c + 1 outside
    return inside - outside, torch.maximum(inside, outside).mean(dim=(2, 3))


def test_fcis_assembly_by_hand():
    # spatial_scale 1 and a box of 2M x 2M pixels at integers: cell (i, j) is the 2 x 2 window at (y1 + 2i, x1 + 2j)
    # of map g's part (i k // M, j k // M), channel (g k + i k // M) k + j k // M.
    torch.manual_seed(0)
    mask_size = 7
    head = models.FCISHead(4, CLASSES, 1.0, bins=BINS, mask_size=mask_size)
    with torch.no_grad():
        head.score_maps.weight.normal_()
    features = torch.randn(1, 4, 20, 20)
    x1, y1 = 2, 4
    box = torch.tensor([[0, x1, y1, x1 + 2 * mask_size, y1 + 2 * mask_size]], dtype=torch.float32)
    mask_logits, scores = head(features, box)
    with torch.no_grad():
        maps = head.score_maps(features)[0]
    assembled = torch.empty(1, 2 * CLASSES, mask_size, mask_size)
    for g in range(2 * CLASSES):
        for i in range(mask_size):
            for j in range(mask_size):
                channel = (g * BINS + i * BINS // mask_size) * BINS + j * BINS // mask_size
                window = maps[channel, y1 + 2 * i : y1 + 2 * i + 2, x1 + 2 * j : x1 + 2 * j + 2]
                assembled[0, g, i, j] = window.mean()
    expected_mask_logits, expected_scores = _inside_outside(assembled)
    torch.testing.assert_close(mask_logits, expected_mask_logits)
    torch.testing.assert_close(scores, expected_scores)


def test_fcis_assembly_equals_roi_align_of_every_map_then_each_cells_part():
    # The other way to assemble: torchvision's roi_align (aligned, as ps_roi_align) of all 2 k^2 (C + 1) maps to
    # M x M, then for each cell the channel of its part.
    mask_size = 7
    head = models.FCISHead(8, CLASSES, SCALE, bins=BINS, mask_size=mask_size, pooling="ps_roi_align")
    features = _features()
    with torch.no_grad():
        head.score_maps.weight.normal_()
        pooled = torchvision.ops.roi_align(head.score_maps(features), BOXES, mask_size, SCALE, 2, aligned=True)
        mask_logits, scores = head(features, BOXES)
    part = torch.arange(mask_size) * BINS // mask_size
    channels = (torch.arange(2 * CLASSES)[:, None, None] * BINS + part[:, None]) * BINS + part  # [2 (C + 1), M, M]
    assembled = pooled.gather(1, channels.expand(len(BOXES), -1, -1, -1))
    expected_mask_logits, expected_scores = _inside_outside(assembled)
    torch.testing.assert_close(mask_logits, expected_mask_logits)
    torch.testing.assert_close(scores, expected_scores)


@pytest.mark.parametrize(
    "build", [lambda: _rfcn(reduce_channels=6), lambda: _fcis(pooling="ps_roi_align")], ids=["rfcn", "fcis"]
)
def test_fx_and_torchscript_give_eager_results(build):
    head = build()
    features = _features()
    expected = head(features, BOXES)
    for converted in (torch.fx.symbolic_trace(head), torch.jit.script(head)):
        for actual, wanted in zip(converted(features, BOXES), expected):
            torch.testing.assert_close(actual, wanted, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- training


def _rfcn_loss(head, features, labels, targets):
    scores, deltas = head(features, BOXES)
    return F.cross_entropy(scores, labels) + F.smooth_l1_loss(deltas, targets[:, : deltas.shape[1]])


def _fcis_loss(head, features, labels, targets):
    mask_logits, scores = head(features, BOXES)
    positive = labels > 0
    masks = mask_logits[positive, labels[positive]]
    return F.cross_entropy(scores, labels) + F.binary_cross_entropy_with_logits(masks, targets[positive])


@pytest.mark.parametrize(
    "build, loss",
    [
        (lambda: _rfcn(reduce_channels=6), _rfcn_loss),
        (lambda: _rfcn(reduce_channels=6, pooling="ps_roi_align", class_agnostic_boxes=False), _rfcn_loss),
        (lambda: _fcis(reduce_channels=6), _fcis_loss),
        (lambda: _fcis(reduce_channels=6, pooling="ps_roi_align"), _fcis_loss),
    ],
    ids=["rfcn-ps_roi_pool", "rfcn-ps_roi_align-class-specific", "fcis-ps_roi_pool", "fcis-ps_roi_align"],
)
def test_training_reaches_every_parameter_and_lowers_the_loss(build, loss):
    head = build()
    features = _features()
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([1, 2, 0, 2, 1])  # every class, the background too
    if isinstance(head, models.FCISHead):  # M x M mask targets
        targets = (torch.rand(5, 2 * BINS, 2 * BINS, generator=generator) > 0.5).float()
    else:  # box targets, as many as the head's deltas (4 or 4 per class)
        targets = torch.randn(5, 4 * CLASSES, generator=generator)
    optimiser = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for step in range(20):
        optimiser.zero_grad()
        value = loss(head, features, labels, targets)
        value.backward()
        if step == 0:
            for name, parameter in head.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        optimiser.step()
        losses.append(value.item())
    assert losses[-1] < 0.97 * losses[0], losses  # the 0.01-std start learns slowly: 6-9% in 20 steps


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.RFCNHead(0, 3, 0.25), "RFCNHead: in_channels must be an int >= 1, got 0"),
        (lambda: models.RFCNHead(8, 1, 0.25), r"RFCNHead: num_classes must be an int >= 2 \(background included\)"),
        (lambda: models.RFCNHead(8, 3, 0.25, bins=0), "RFCNHead: bins must be an int >= 1, got 0"),
        (lambda: models.RFCNHead(8, 3, 0), "RFCNHead: spatial_scale must be a positive number .*, got 0"),
        (lambda: models.RFCNHead(8, 3, "1/16"), "RFCNHead: spatial_scale must be a positive number .*, got '1/16'"),
        (lambda: models.RFCNHead(8, 3, float("inf")), "RFCNHead: spatial_scale must be finite, got inf"),
        (
            lambda: models.RFCNHead(8, 3, 0.25, pooling="roi_pool"),
            "RFCNHead: pooling must be 'ps_roi_pool' or 'ps_roi_align', got 'roi_pool'",
        ),
        (
            lambda: models.RFCNHead(8, 3, 0.25, sampling_ratio=2.0),
            r"RFCNHead: sampling_ratio must be an int \(<= 0: adaptive\), got 2.0",
        ),
        (
            lambda: models.RFCNHead(8, 3, 0.25, reduce_channels=0),
            "RFCNHead: reduce_channels must be an int >= 1 or None, got 0",
        ),
        (
            lambda: models.RFCNHead(8, 3, 0.25, class_agnostic_boxes=1),
            "RFCNHead: class_agnostic_boxes must be a bool, got 1",
        ),
        (
            lambda: models.RFCNHead(8, 3, 0.25)(torch.randn(1, 4, 8, 8), BOXES[:1]),
            r"RFCNHead: features must be a Tensor\[N, 8, H, W\] \(in_channels\), got \[1, 4, 8, 8\]",
        ),
        (lambda: models.FCISHead(8, 1, 0.25), r"FCISHead: num_classes must be an int >= 2 \(background included\)"),
        (
            lambda: models.FCISHead(8, 3, 0.25, bins=7, mask_size=5),
            r"FCISHead: mask_size must be an int >= 7 \(bins: every part fills a cell\), got 5",
        ),
        (
            lambda: models.FCISHead(8, 3, 0.25, pooling="ps_roi_max"),
            "FCISHead: pooling must be 'ps_roi_pool' or 'ps_roi_align', got 'ps_roi_max'",
        ),
        (
            lambda: models.FCISHead(8, 3, 0.25)(torch.randn(8, 8, 8), BOXES[:1]),
            r"FCISHead: features must be a Tensor\[N, 8, H, W\] \(in_channels\), got \[8, 8, 8\]",
        ),
    ],
)
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(ValueError, match=message):
        call()
