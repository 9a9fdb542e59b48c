"""Patches for the defect GAN, drawn from a fold's training strips.

``DefectPatches`` gives three kinds of draws, each from a numpy Generator
(so a batch is a function of its seed):

- ``real``: a grey patch around a real instance of a class, with that class's
  mask in the patch (what the GAN learns from);
- ``shape``: a mask of a class to paint, from the real instances' shapes,
  flipped, scaled and shifted inside the patch;
- ``background``: a window of a defect-free strip (what synthesis paints on),
  avoiding the black off-strip regions.

Every pixel and shape comes from the strips the pool was built from: the
training fold only.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .copy_paste import Instance, InstancePool
from .io import read_image
from .severstal import Annotations

DARK = 12  # grey levels below this are off-strip background, not steel


class DefectPatches:
    def __init__(self, annotations: Annotations, image_ids: Sequence[str], classes: Sequence[int], patch: int,
                 min_area: int = 16, cache_images: int = 512):
        self.annotations, self.patch = annotations, int(patch)
        self.pool = InstancePool(annotations, image_ids, classes, min_area)
        if missing := [c for c in classes if not self.pool.by_class.get(c)]:
            raise ValueError(f"no training instance of class {missing} (>= {min_area} pixels) among "
                             f"{len(image_ids)} strips: drop it from the classes")
        self.free_ids = [i for i in image_ids if not annotations.classes_present(i)]
        self.cache_images = cache_images
        self._grey: dict[str, np.ndarray] = {}

    def grey(self, image_id: str) -> np.ndarray:
        """float32 [H, W] in [0, 1]: the strip's first channel (Severstal strips are grey)."""
        if image_id not in self._grey:
            if len(self._grey) >= self.cache_images:
                self._grey.pop(next(iter(self._grey)))
            self._grey[image_id] = read_image(self.annotations.path(image_id))[..., 0].astype(np.float32) / 255
        return self._grey[image_id]

    def instance(self, rng: np.random.Generator, class_id: int) -> Instance:
        found = self.pool.by_class[class_id]
        return found[int(rng.integers(len(found)))]

    def real(self, rng: np.random.Generator, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(grey float32 [P, P], mask float32 [P, P]): a window centred near a
        random pixel of a random instance of ``class_id``, holding that
        class's mask; flipped at random."""
        instance = self.instance(rng, class_id)
        ys, xs = np.nonzero(instance.mask())
        k = int(rng.integers(len(ys)))
        height, width = self.annotations.shape
        p = self.patch
        jitter = rng.integers(-p // 4, p // 4 + 1, size=2)
        top = int(np.clip(instance.top + ys[k] - p // 2 + jitter[0], 0, height - p))
        left = int(np.clip(instance.left + xs[k] - p // 2 + jitter[1], 0, width - p))
        image = self.grey(instance.image_id)[top:top + p, left:left + p]
        mask = self.annotations.masks(instance.image_id)[class_id - 1, top:top + p, left:left + p].astype(np.float32)
        return _flip(rng, image, mask)

    def shape(self, rng: np.random.Generator, class_id: int, scale: tuple[float, float] = (0.75, 1.25)) -> np.ndarray:
        """float32 [P, P] in {0, 1}, non-empty: a real instance's shape,
        flipped, scaled by a factor in ``scale``, cut to the patch if larger
        and placed at a random position inside it."""
        p = self.patch
        mask = self.instance(rng, class_id).mask().astype(np.uint8)
        factor = float(rng.uniform(*scale))
        size = (max(1, round(mask.shape[1] * factor)), max(1, round(mask.shape[0] * factor)))
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if not mask.any():  # a sliver scaled away: keep it at its own size
            mask = self.instance(rng, class_id).mask().astype(np.uint8)
        h, w = min(mask.shape[0], p), min(mask.shape[1], p)
        y0, x0 = int(rng.integers(mask.shape[0] - h + 1)), int(rng.integers(mask.shape[1] - w + 1))
        cut = mask[y0:y0 + h, x0:x0 + w]
        if not cut.any():  # the window missed the shape: centre it on a pixel of it
            ys, xs = np.nonzero(mask)
            y0, x0 = max(0, min(ys[0] - h // 2, mask.shape[0] - h)), max(0, min(xs[0] - w // 2, mask.shape[1] - w))
            cut = mask[y0:y0 + h, x0:x0 + w]
        out = np.zeros((p, p), np.float32)
        top, left = int(rng.integers(p - h + 1)), int(rng.integers(p - w + 1))
        out[top:top + h, left:left + w] = cut
        return _flip(rng, out)[0]

    def background(self, rng: np.random.Generator, tries: int = 20) -> tuple[str, int, int]:
        """(image_id, top, left) of a P x P window of a defect-free strip with
        at most 5% off-strip (dark) pixels, or the last window tried."""
        if not self.free_ids:
            raise ValueError("no defect-free training strip to paint on")
        height, width = self.annotations.shape
        p = self.patch
        for _ in range(tries):
            image_id = self.free_ids[int(rng.integers(len(self.free_ids)))]
            top, left = int(rng.integers(height - p + 1)), int(rng.integers(width - p + 1))
            window = self.grey(image_id)[top:top + p, left:left + p]
            if (window < DARK / 255).mean() <= 0.05:
                break
        return image_id, top, left

    def batch(self, rng: np.random.Generator, size: int, classes: Sequence[int]) -> dict[str, np.ndarray]:
        """``size`` real patches, classes drawn uniformly from ``classes``:
        image and mask float32 [N, 1, P, P], class_ids int64 [N], noise float32 [N, 1, P, P]."""
        class_ids = np.array([classes[int(rng.integers(len(classes)))] for _ in range(size)], np.int64)
        pairs = [self.real(rng, int(c)) for c in class_ids]
        return {"image": np.stack([i for i, _ in pairs])[:, None], "mask": np.stack([m for _, m in pairs])[:, None],
                "class_ids": class_ids,
                "noise": rng.standard_normal((size, 1, self.patch, self.patch)).astype(np.float32)}


def _flip(rng: np.random.Generator, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    if rng.random() < 0.5:
        arrays = tuple(a[:, ::-1] for a in arrays)
    if rng.random() < 0.5:
        arrays = tuple(a[::-1] for a in arrays)
    return tuple(np.ascontiguousarray(a) for a in arrays)
