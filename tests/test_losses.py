"""Segmentation losses against hand-computed cases, and their weighted sum."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError, LossConfig
from models.losses import bce_loss, build_seg_loss, dice_loss, focal_loss, lovasz_hinge_loss


def random_case(seed=0, shape=(2, 4, 8, 8)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen) * 3
    masks = (torch.rand(shape, generator=gen) > 0.7).float()
    return logits, masks


def perfect_logits(masks, margin=20.0):
    return margin * (2 * masks - 1)


def test_bce_matches_hand_value():
    logits = torch.zeros(1, 4, 2, 2)
    masks = torch.ones(1, 4, 2, 2)
    assert bce_loss(logits, masks).item() == pytest.approx(math.log(2))


def test_bce_pos_weight_scales_positive_pixels_of_its_class_only():
    logits, masks = random_case()
    per_pixel = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    positive_class0 = (per_pixel * masks)[:, 0].sum()
    extra = bce_loss(logits, masks, pos_weight=[3.0, 1.0, 1.0, 1.0]) - bce_loss(logits, masks)
    assert extra.item() == pytest.approx((2 * positive_class0 / per_pixel.numel()).item(), rel=1e-5)


def test_dice_perfect_prediction_is_zero_and_absent_classes_add_nothing():
    masks = torch.zeros(2, 4, 16, 16)
    masks[0, 1, 4:8, 4:12] = 1
    assert dice_loss(perfect_logits(masks), masks).item() == pytest.approx(0.0, abs=1e-4)
    # classes 0, 2, 3 have no positive pixel: even confident false positives there add 0 (BCE's job)
    logits = perfect_logits(masks)
    logits[:, [0, 2, 3]] = 20.0
    assert dice_loss(logits, masks).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_hand_case_is_per_class_over_the_batch():
    """Class 0 has 2 true pixels, in image 0; the prediction hits 1 of them and
    has 1 false positive in image 1: Dice over the batch 2*1 / (2 + 2)."""
    masks = torch.zeros(2, 4, 2, 2)
    masks[0, 0, 0, :] = 1
    logits = torch.full_like(masks, -30.0)
    logits[0, 0, 0, 0] = 30.0
    logits[1, 0, 1, 1] = 30.0
    assert dice_loss(logits, masks).item() == pytest.approx((1 - 2 * 1 / (2 + 2)) / 4, abs=1e-5)


def test_dice_matches_a_direct_computation():
    logits, masks = random_case()
    masks[:, 3] = 0  # one class absent from the batch
    probs = torch.sigmoid(logits)
    dice = 2 * (probs * masks).sum(dim=(0, 2, 3)) / (probs.sum(dim=(0, 2, 3)) + masks.sum(dim=(0, 2, 3)))
    expected = ((1 - dice) * (masks.sum(dim=(0, 2, 3)) > 0)).mean()
    assert dice_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_with_gamma_zero_is_bce_and_gamma_down_weights_easy_pixels():
    logits, masks = random_case()
    assert focal_loss(logits, masks, gamma=0.0).item() == pytest.approx(bce_loss(logits, masks).item(), rel=1e-6)
    assert focal_loss(logits, masks, gamma=2.0) < bce_loss(logits, masks)


def test_lovasz_perfect_logits_is_zero():
    _, masks = random_case()
    assert lovasz_hinge_loss(perfect_logits(masks, margin=1.5), masks).item() == 0.0


def test_lovasz_hand_case():
    """Labels [1, 0], logits [2, 0.5]: hinge errors [-1, 1.5]. Only the false
    positive is wrong; with it the Jaccard loss is 1 - 1/2, so the Lovasz
    extension is 1.5 * 0.5."""
    logits = torch.tensor([[[[2.0, 0.5]]]])
    masks = torch.tensor([[[[1.0, 0.0]]]])
    assert lovasz_hinge_loss(logits, masks).item() == pytest.approx(0.75)


def test_lovasz_all_wrong_by_margin_one_is_one():
    logits = torch.zeros(1, 1, 1, 2)
    masks = torch.tensor([[[[1.0, 0.0]]]])
    assert lovasz_hinge_loss(logits, masks).item() == pytest.approx(1.0)


def test_lovasz_is_the_mean_over_images_and_classes():
    logits, masks = random_case()
    parts = [lovasz_hinge_loss(logits[b:b + 1, c:c + 1], masks[b:b + 1, c:c + 1]) for b in range(2) for c in range(4)]
    assert lovasz_hinge_loss(logits, masks).item() == pytest.approx(torch.stack(parts).mean().item(), rel=1e-6)


def test_weighted_sum_names_only_active_terms_and_sums_to_total():
    logits, masks = random_case()
    cfg = LossConfig(bce=0.75, dice=0.25, focal=0.0, lovasz=0.5, pos_weight=[2.0, 2.0, 1.0, 1.5])
    losses = build_seg_loss(cfg)(logits, masks)
    assert set(losses) == {"loss_bce", "loss_dice", "loss_lovasz"}
    assert losses["loss_bce"].item() == pytest.approx(0.75 * bce_loss(logits, masks, [2.0, 2.0, 1.0, 1.5]).item())
    assert losses["loss_dice"].item() == pytest.approx(0.25 * dice_loss(logits, masks).item())
    assert losses["loss_lovasz"].item() == pytest.approx(0.5 * lovasz_hinge_loss(logits, masks).item())


def test_focal_term_uses_configured_gamma():
    logits, masks = random_case()
    losses = build_seg_loss(LossConfig(bce=0.0, focal=2.0, focal_gamma=1.0))(logits, masks)
    assert set(losses) == {"loss_focal"}
    assert losses["loss_focal"].item() == pytest.approx(2 * focal_loss(logits, masks, gamma=1.0).item())


def test_all_weights_zero_is_an_error():
    with pytest.raises(ConfigError, match="loss.bce"):
        build_seg_loss(LossConfig(bce=0.0))


def test_float32_under_bf16_autocast():
    logits, masks = random_case()
    loss = build_seg_loss(LossConfig(bce=1.0, dice=1.0, focal=1.0, lovasz=1.0))
    reference = loss(logits, masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = loss(logits.bfloat16(), masks)
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert value.item() == pytest.approx(reference[name].item(), rel=0.05), name


def test_gradients_flow_to_logits():
    logits, masks = random_case()
    logits.requires_grad_(True)
    losses = build_seg_loss(LossConfig(bce=1.0, dice=1.0, focal=1.0, lovasz=1.0))(logits, masks)
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
