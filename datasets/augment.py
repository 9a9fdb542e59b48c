"""Albumentations training presets built from ``core.config.AugmentConfig``.

A preset is called as ``transform(image=uint8 [H, W, 3], masks=uint8 [4, H, W])``
and returns the same keys and shapes; geometric transforms move the image and
all four masks together (masks with nearest-neighbour interpolation, zeros
outside the image), photometric ones touch the image only.
"""

from __future__ import annotations

import albumentations as A
import cv2

from core.config import AugmentConfig

from .copy_paste import CopyPaste, InstancePool


def build_train_transform(cfg: AugmentConfig, pool: InstancePool | None = None) -> A.Compose:
    """Copy-paste of ``pool``'s instances first when ``cfg.copy_paste.p`` > 0
    (datasets/copy_paste.py; ``pool`` holds the training fold's instances),
    then flips, a small affine warp, brightness/contrast, gamma, Gaussian noise
    and a blur (Gaussian or motion), each applied with its probability in
    ``cfg`` (0 leaves it out).

    ``cfg.strength`` multiplies every limit: shift (fraction of the crop size),
    scale, rotation (degrees), brightness, contrast, gamma, noise std (fraction
    of 255, drawn in [0, limit]) and the blur kernel (largest odd size, at
    least 3).
    """
    s = cfg.strength
    transforms = []
    if cfg.copy_paste.p > 0:
        if pool is None:
            raise ValueError("augment.copy_paste.p > 0 needs the pool of training instances to paste from")
        paste = cfg.copy_paste
        transforms.append(CopyPaste(pool, paste.max_pastes, paste.blend, paste.feather, p=paste.p))
    transforms += [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        _affine(cfg),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit * s, contrast_limit=cfg.contrast_limit * s, p=cfg.brightness_contrast
        ),
        A.RandomGamma(gamma_limit=(100 * (1 - cfg.gamma_limit * s), 100 * (1 + cfg.gamma_limit * s)), p=cfg.gamma),
        # Severstal strips are grey: one noise field shared by the 3 channels.
        A.GaussNoise(std_range=(0.0, cfg.noise_std * s), per_channel=False, p=cfg.noise),
        _blur(cfg),
    ]
    return A.Compose([t for t in transforms if t.p > 0])


def _affine(cfg: AugmentConfig) -> A.Affine:
    s = cfg.strength
    return A.Affine(
        translate_percent=(-cfg.shift_limit * s, cfg.shift_limit * s),
        scale=(1 - cfg.scale_limit * s, 1 + cfg.scale_limit * s),
        rotate=(-cfg.rotate_limit * s, cfg.rotate_limit * s),
        keep_ratio=True,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=cfg.affine,
    )


def _blur(cfg: AugmentConfig) -> A.OneOf:
    largest_odd = max(3, int(cfg.blur_limit * cfg.strength - 1) // 2 * 2 + 1)
    # A centred, symmetric motion kernel (no shift, direction 0) blurs without moving the image off its masks.
    return A.OneOf(
        [
            A.GaussianBlur(blur_limit=(3, largest_odd), p=1.0),
            A.MotionBlur(blur_limit=(3, largest_odd), allow_shifted=False, direction_range=(0.0, 0.0), p=1.0),
        ],
        p=cfg.blur,
    )
