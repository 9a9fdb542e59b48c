"""Semantic-segmentation dataset: an image (or a random crop of it) and its
four class masks.

Randomness (crop positions, and a fresh seed for the Albumentations
transform at every item) comes from torch: from the dataset's own generator
once ``set_seed`` has been called, else from torch's global generator, which
``torch.manual_seed`` fixes and DataLoader seeds differently in every worker.
Call ``set_seed`` inside each worker (``training.data.seed_worker`` does), not
once before the workers start, or they would all copy one sequence.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .io import read_image, to_tensor
from .severstal import AnnotationError, Annotations


class SeverstalSegmentation(Dataset):
    """Items are ``(image, target)``: image float32 [3, H, W] in [0, 1];
    target ``{"masks": float32 [4, H, W] in {0, 1} (channel c = class c+1),
    "labels": float32 [4] (class present in the crop), "image_id": str}``.

    ``crop`` (height, width) gives random crops, padded with zeros where the
    image is smaller; None gives whole images. When the image has a defect, a
    crop contains a defect pixel (drawn uniformly among them) with probability
    ``crop_defect_prob``; otherwise its position is uniform. ``transform`` is
    an Albumentations transform, called as ``transform(image=uint8 [h, w, 3],
    masks=uint8 [4, h, w], image_id=str)`` after cropping and reseeded for every item
    (e.g. ``datasets.augment.build_train_transform``).
    """

    collate_fn = staticmethod(default_collate)

    def __init__(self, annotations: Annotations, image_ids, crop: tuple[int, int] | None = (256, 256),
                 crop_defect_prob: float = 0.8, transform=None):
        if not 0.0 <= crop_defect_prob <= 1.0:
            raise ValueError(f"crop_defect_prob must be in [0, 1], got {crop_defect_prob}")
        self.annotations = annotations
        self.image_ids = list(image_ids)
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.crop_defect_prob = crop_defect_prob
        self.transform = transform
        self.generator: torch.Generator | None = None

    def set_seed(self, seed: int) -> None:
        """Draw all later randomness from a generator seeded with ``seed``."""
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index):
        image, masks = self.sample(index)
        target = {
            "masks": torch.from_numpy(masks.astype(np.float32)),
            "labels": torch.from_numpy(masks.any(axis=(1, 2)).astype(np.float32)),
            "image_id": self.image_id(index),
        }
        return to_tensor(image), target

    def image_id(self, index) -> str:
        return self.image_ids[index[0] if isinstance(index, tuple) else index]

    def sample(self, index) -> tuple[np.ndarray, np.ndarray]:
        """The cropped, transformed ``(image uint8 [h, w, 3], masks uint8 [4, h, w])``.

        ``index`` is an int, or ``(int, crop_width)`` from a batch sampler that
        picks one crop width per batch (mixed-width training)."""
        crop = self.crop
        if isinstance(index, tuple):
            index, width = index
            crop = (crop[0] if crop else self.annotations.shape[0], int(width))
        image, masks = self.load(self.image_ids[index])
        if crop is not None:
            image, masks = random_crop(image, masks, crop, self.crop_defect_prob, self.generator)
        if self.transform is not None:
            self.transform.set_random_seed(int(torch.randint(2**31, (), generator=self.generator)))
            out = self.transform(image=image, masks=masks, image_id=self.image_ids[index])  # copy-paste reads the id
            image, masks = np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["masks"], np.uint8)
        return image, masks

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``(image uint8 [H, W, 3], masks uint8 [4, H, W])``; the
        image must have the annotations' shape."""
        path = self.annotations.path(image_id)
        image = read_image(path)
        if image.shape[:2] != tuple(self.annotations.shape):
            height, width = self.annotations.shape
            raise AnnotationError(
                f"{path} is {image.shape[0]}x{image.shape[1]} (HxW) but the annotations expect "
                f"{height}x{width}"
            )
        return image, self.annotations.masks(image_id)


def random_crop(image: np.ndarray, masks: np.ndarray, size: tuple[int, int], defect_prob: float,
                generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image`` uint8 [H, W, 3] and ``masks`` uint8 [4, H, W] to ``size``
    (h, w), zero-padding at the bottom/right where the image is smaller. With
    probability ``defect_prob`` (if any mask is non-empty) the crop contains a
    defect pixel drawn uniformly; otherwise its position is uniform. Draws
    come from ``generator`` (None: torch's global generator)."""
    image, masks = _pad_to(image, masks, size)
    height, width = image.shape[:2]
    centred = float(torch.rand((), generator=generator)) < defect_prob
    if centred and (defect := np.flatnonzero(masks.any(axis=0))).size:
        y, x = divmod(int(defect[_randint(0, defect.size - 1, generator)]), width)
        top = _randint(max(0, y - size[0] + 1), min(y, height - size[0]), generator)
        left = _randint(max(0, x - size[1] + 1), min(x, width - size[1]), generator)
    else:
        top, left = _randint(0, height - size[0], generator), _randint(0, width - size[1], generator)
    rows, cols = slice(top, top + size[0]), slice(left, left + size[1])
    return np.ascontiguousarray(image[rows, cols]), np.ascontiguousarray(masks[:, rows, cols])


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high]."""
    return low + int(torch.randint(high - low + 1, (), generator=generator))


def _pad_to(image: np.ndarray, masks: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    pad_h, pad_w = max(0, size[0] - image.shape[0]), max(0, size[1] - image.shape[1])
    if not (pad_h or pad_w):
        return image, masks
    return (np.pad(image, ((0, pad_h), (0, pad_w), (0, 0))), np.pad(masks, ((0, 0), (0, pad_h), (0, pad_w))))
