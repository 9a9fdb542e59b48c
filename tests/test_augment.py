"""Augmentation presets: every transform keeps the masks on the image."""

import dataclasses
import warnings

import numpy as np
import pytest

from core.config import AugmentConfig
from datasets.augment import build_train_transform

PROBS = ("hflip", "vflip", "affine", "brightness_contrast", "gamma", "noise", "blur")
PHOTOMETRIC = ("brightness_contrast", "gamma", "noise", "blur")
OFF = {name: 0.0 for name in PROBS}


def blob_sample(height=96, width=128):
    """A dark grey image with one bright blob per class; masks = the bright pixels."""
    masks = np.zeros((4, height, width), np.uint8)
    masks[0, 10:30, 10:50] = 1
    masks[1, 50:80, 20:40] = 1
    masks[2, 20:60, 70:90] = 1
    masks[3, 70:90, 95:120] = 1
    image = np.where(masks.any(0), np.uint8(220), np.uint8(40))
    image = np.repeat(image[..., None], 3, axis=2)
    return image, masks


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def centroid(weights):
    rows, cols = np.indices(weights.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def assert_aligned(image, masks):
    grey, union = image.mean(axis=2), masks.any(0)
    # Photometric transforms move both grey levels: threshold midway between them.
    bright = grey > (np.median(grey[union]) + np.median(grey[~union])) / 2
    assert iou(union, bright) > 0.9
    # Symmetric blur and interpolation leave the centroid of the bright pixels in place; a shift moves it.
    assert np.abs(centroid(bright) - centroid(union)).max() < 1.0


def only(name, **limits):
    return AugmentConfig(**{**OFF, name: 1.0, **limits})


@pytest.mark.parametrize("name", PROBS)
def test_each_transform_keeps_masks_aligned(name):
    transform = build_train_transform(only(name))
    assert len(transform.transforms) == 1
    image, masks = blob_sample()
    for seed in range(8):
        transform.set_random_seed(seed)
        out = transform(image=image, masks=masks)
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert out["masks"].shape == masks.shape and out["masks"].dtype == np.uint8
        assert set(np.unique(out["masks"])) <= {0, 1}
        assert_aligned(out["image"], out["masks"])
        if name in PHOTOMETRIC:
            np.testing.assert_array_equal(out["masks"], masks)
            assert not np.array_equal(out["image"], image)


@pytest.mark.parametrize("strength", [1.0, 2.0])
def test_full_preset_keeps_masks_aligned(strength):
    transform = build_train_transform(AugmentConfig(strength=strength, **{name: 1.0 for name in PROBS}))
    image, masks = blob_sample()
    for seed in range(16):
        transform.set_random_seed(seed)
        out = transform(image=image, masks=masks)
        assert_aligned(out["image"], out["masks"])
        # Small warps move classes, they do not merge or drop them.
        assert (np.abs(out["masks"].sum((1, 2)) / masks.sum((1, 2)) - 1) < 0.5).all()


def test_zero_probability_disables_and_empty_preset_is_identity():
    transform = build_train_transform(AugmentConfig(**OFF))
    assert len(transform.transforms) == 0
    image, masks = blob_sample()
    out = transform(image=image, masks=masks)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["masks"], masks)


def test_strength_scales_every_limit():
    names = {type(t).__name__: t for t in build_train_transform(AugmentConfig(strength=2.0)).transforms}
    affine = names["Affine"]
    assert affine.rotate == pytest.approx((-10.0, 10.0))
    assert affine.scale["x"] == pytest.approx((0.8, 1.2))
    assert affine.translate_percent["x"] == pytest.approx((-0.1, 0.1))
    assert names["RandomBrightnessContrast"].brightness_limit == pytest.approx((-0.4, 0.4))
    assert names["RandomGamma"].gamma_limit == pytest.approx((60.0, 140.0))
    assert names["GaussNoise"].std_range == pytest.approx((0.0, 0.06))
    assert [t.blur_limit for t in names["OneOf"].transforms] == [(3, 9), (3, 9)]


@pytest.mark.parametrize("blur_limit, strength, largest", [(5, 1.0, 5), (5, 0.5, 3), (6, 1.0, 5), (7, 0.0, 3)])
def test_blur_kernel_is_the_largest_odd_size_at_least_3(blur_limit, strength, largest):
    cfg = dataclasses.replace(only("blur"), blur_limit=blur_limit, strength=strength)
    (one_of,) = build_train_transform(cfg).transforms
    assert all(t.blur_limit == (3, largest) for t in one_of.transforms)


def test_no_warnings_when_building_and_applying():
    image, masks = blob_sample()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transform = build_train_transform(AugmentConfig(**{name: 1.0 for name in PROBS}))
        transform(image=image, masks=masks)
