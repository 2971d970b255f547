"""torchvision's Keypoint R-CNN (Mask R-CNN's keypoint head, He et al. 2017) on segops' RoIAlign:
use_segops_roi_align swaps the MultiScaleRoIAlign of its box head and of its keypoint head, and the model equals
stock torchvision, in evaluation (pooled features, keypoint logits and detections) and in training (losses and every
parameter's gradient)."""

import copy

import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import keypointrcnn_inference
from torchvision.ops import MultiScaleRoIAlign

import segops.models as models
from segops.models.rcnn import SegopsMultiScaleRoIAlign, SegopsRoIHeads

NUM_KEYPOINTS = 5
# Small images, and few RoIs in the keypoint head (eight 512-channel 3x3 convolutions on 14x14 maps: 3.7 GFLOP per
# RoI), so that each model runs in about a second here.
OPTIONS = dict(
    min_size=128,
    max_size=160,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=50,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=50,
    box_batch_size_per_image=8,
    box_score_thresh=0.0,
    box_detections_per_img=3,
)


def _images(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return [
        torch.rand(3, 120, 150, generator=generator, dtype=dtype),
        torch.rand(3, 128, 140, generator=generator, dtype=dtype),
    ]


def _models(dtype=torch.float32):
    """(stock, swapped): the same randomly initialised Keypoint R-CNN, the second on segops."""
    torch.manual_seed(0)
    stock = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, num_keypoints=NUM_KEYPOINTS, **OPTIONS
    ).to(dtype)
    swapped = copy.deepcopy(stock)
    assert models.use_segops_roi_align(swapped) is swapped
    return stock, swapped


@pytest.fixture(scope="module")
def keypoint_rcnn():
    return _models()


def test_both_multi_scale_roi_aligns_are_swapped_with_their_settings(keypoint_rcnn):
    stock, swapped = keypoint_rcnn
    heads, stock_heads = swapped.roi_heads, stock.roi_heads
    assert isinstance(heads, SegopsRoIHeads) and not isinstance(stock_heads, SegopsRoIHeads)
    for name, size in (("box_roi_pool", (7, 7)), ("keypoint_roi_pool", (14, 14))):
        pool, stock_pool = getattr(heads, name), getattr(stock_heads, name)
        assert isinstance(pool, SegopsMultiScaleRoIAlign) and type(stock_pool) is MultiScaleRoIAlign, name
        assert pool.output_size == stock_pool.output_size == size, name
        assert pool.featmap_names == stock_pool.featmap_names == ["0", "1", "2", "3"], name
        assert pool.sampling_ratio == stock_pool.sampling_ratio == 2, name
        assert (pool.canonical_scale, pool.canonical_level) == (stock_pool.canonical_scale, stock_pool.canonical_level)
    # Nothing else changed: the heads' own modules and the model's settings are torchvision's.
    assert heads.has_keypoint() and not heads.has_mask()
    assert heads.keypoint_predictor.kps_score_lowres.out_channels == NUM_KEYPOINTS
    assert heads.score_thresh == stock_heads.score_thresh and heads.detections_per_img == 3
    assert swapped.state_dict().keys() == stock.state_dict().keys()


def test_keypoint_head_on_fixed_proposals_equals_stock(keypoint_rcnn):
    """The strongest comparison, with no NMS or score threshold in between: on the same proposals, the pooled box and
    keypoint features, the keypoint logits and the decoded keypoints are torchvision's bit for bit. Exact equality is
    the right test on the CPU: segops' RoIAlign does torchvision's arithmetic in torchvision's order
    (test_roi_align.py::test_forward_matches_torchvision), the pooling of each FPN level is roi_align's bit for bit
    (test_multi_scale_roi_align.py), and everything before and after is the same modules on the same tensors."""
    stock, swapped = keypoint_rcnn
    stock.eval(), swapped.eval()
    with torch.no_grad():
        image_list, _ = stock.transform(_images())
        features = stock.backbone(image_list.tensors)
        # Sub-pixel boxes of 6 to 150 pixels, on FPN levels 2 and 3 (the largest these images have), one past the edge.
        proposals = [
            torch.tensor([[10.0, 20.0, 80.0, 100.0], [30.3, 40.7, 36.2, 47.9], [0.0, 0.0, 159.9, 127.5]]),
            torch.tensor([[5.25, 60.5, 45.75, 90.125], [100.1, 3.3, 180.0, 140.0], [60.0, 50.0, 61.5, 52.0]]),
        ]
        for name in ("box_roi_pool", "keypoint_roi_pool"):
            expected = getattr(stock.roi_heads, name)(features, proposals, image_list.image_sizes)
            actual = getattr(swapped.roi_heads, name)(features, proposals, image_list.image_sizes)
            assert torch.equal(actual, expected), name
        assert set(stock.roi_heads.keypoint_roi_pool.map_levels(proposals).flatten().tolist()) == {0, 1}
        logits = [
            model.roi_heads.keypoint_predictor(model.roi_heads.keypoint_head(pooled))
            for model, pooled in ((stock, expected), (swapped, actual))
        ]
        assert logits[0].shape == (6, NUM_KEYPOINTS, 56, 56) and torch.equal(logits[1], logits[0])
        expected_keypoints, expected_scores = keypointrcnn_inference(logits[0], proposals)
        actual_keypoints, actual_scores = keypointrcnn_inference(logits[1], proposals)
    for actual, expected in zip(actual_keypoints + actual_scores, expected_keypoints + expected_scores):
        assert torch.equal(actual, expected)


def test_keypoint_rcnn_detections_equal_stock(keypoint_rcnn):
    """The whole model in evaluation, through the RPN, NMS and the score threshold: the same detections, exactly (see
    the test above for why equality, not a tolerance, is expected)."""
    stock, swapped = keypoint_rcnn
    with torch.no_grad():
        expected = stock.eval()(_images())
        actual = swapped.eval()(_images())
    for actual_image, expected_image in zip(actual, expected):
        assert set(actual_image) == {"boxes", "labels", "scores", "keypoints", "keypoints_scores"}
        assert len(expected_image["boxes"]) == 3
        assert expected_image["keypoints"].shape == (3, NUM_KEYPOINTS, 3)
        for key in expected_image:
            assert torch.equal(actual_image[key], expected_image[key]), key


def _targets(dtype):
    keypoints = torch.tensor(
        [[20.3, 30.7, 1], [50.2, 60.1, 1], [70.9, 90.4, 1], [15.5, 95.5, 1], [40.0, 41.0, 0]], dtype=torch.float32
    )
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]], dtype=dtype), "labels": torch.tensor([1]),
         "keypoints": keypoints[None]},
        {"boxes": torch.tensor([[30.0, 10.0, 120.0, 90.0]], dtype=dtype), "labels": torch.tensor([1]),
         "keypoints": (keypoints + torch.tensor([25.0, -5.0, 0.0]))[None]},
    ]  # fmt: skip


def test_keypoint_rcnn_training_losses_and_gradients_equal_stock():
    """Training, in float64: the same proposals sampled (the same seed), the same five losses and every parameter's
    gradient. The forward is exact (as in evaluation), so the losses are equal; the backward may differ only in the
    order of the RoI ops' sums into the FPN maps' gradients (the CPU kernels of both add each element's taps RoI by
    RoI, bin by bin): at most gamma_n = n u of their magnitude, 3e-14 for n of a few hundred taps in float64, carried
    linearly through the same backbone's backward. The bound held here, 1e-9 of each gradient's largest entry, leaves
    a factor 3e4 for cancellation in the backbone's sums. Measured on this machine: equal bit for bit (in float32
    too)."""
    stock, swapped = _models(torch.float64)
    images, targets = _images(torch.float64), _targets(torch.float64)
    losses, gradients = [], []
    for model in (stock, swapped):
        model.train()
        torch.manual_seed(1)  # the RPN's and the box head's samplers
        model_losses = model(images, targets)
        sum(model_losses.values()).backward()
        losses.append(model_losses)
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    assert set(losses[0]) == {"loss_classifier", "loss_box_reg", "loss_keypoint", "loss_objectness", "loss_rpn_box_reg"}
    assert losses[0]["loss_keypoint"] > 0
    for key, expected in losses[0].items():
        assert torch.equal(losses[1][key], expected), key
    assert gradients[0].keys() == gradients[1].keys()
    assert all(g is not None for g in gradients[0].values()), "every parameter takes part in the losses"
    moved = 0
    for name, expected in gradients[0].items():
        scale = expected.abs().max().item()
        torch.testing.assert_close(gradients[1][name], expected, rtol=0, atol=1e-9 * scale, msg=name)
        moved += scale > 0
    assert moved > 0.9 * len(gradients[0])
