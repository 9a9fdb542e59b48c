"""Copy-paste augmentation: real defect instances pasted into a training crop.

An *instance* is a connected component of one class's mask on a training
strip. ``InstancePool`` indexes the instances of the strips it is given (the
training fold only: ``training.data`` builds it from the fold's training ids,
never from validation ones) and reads their pixels on demand. ``CopyPaste``
is an Albumentations transform: called with ``image=uint8 [h, w, 3]`` and
``masks=uint8 [4, h, w]``, with probability ``p`` it pastes 1..max_pastes
instances at random places in the crop, blending the pixels inside each
instance's mask (feathered alpha, or Poisson blending with
``cv2.seamlessClone``), and sets the masks there: the pasted class on, the
others off. Pixels outside a pasted mask are never changed, so the image
and its masks stay aligned. Poisson blending carries the source's gradients
(texture and the step at its edge) rather than its grey levels, so a
defect's contrast comes out softer than with alpha blending, the default. Its draws come from Albumentations' seeded
generator (``Compose.set_random_seed``): the same seed pastes the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np

from .io import read_image
from .severstal import Annotations

POISSON_MARGIN = 3  # source pixels around an instance that Poisson blending reads (its edge's gradient)


@dataclass(frozen=True)
class Instance:
    image_id: str
    class_id: int  # 1..4
    top: int  # bounding box in the strip
    left: int
    bits: np.ndarray  # np.packbits of the component's bool mask [height, width] inside the box
    height: int
    width: int

    def mask(self) -> np.ndarray:
        """bool [height, width]: the component inside its box."""
        return np.unpackbits(self.bits, count=self.height * self.width).reshape(self.height, self.width).astype(bool)


class InstancePool:
    """The connected components of ``classes`` with at least ``min_area``
    pixels on the strips ``image_ids`` of ``annotations``."""

    def __init__(self, annotations: Annotations, image_ids: Sequence[str], classes: Sequence[int] = (1, 2, 3, 4),
                 min_area: int = 16):
        self.annotations = annotations
        self.image_ids = list(image_ids)
        self.by_class: dict[int, list[Instance]] = {int(c): [] for c in classes}
        # (image_id, class_id) -> the [start, stop) of that strip's instances in by_class[class_id]: a strip's
        # instances of a class are appended together, so they are one contiguous run
        self.spans: dict[tuple[str, int], tuple[int, int]] = {}
        for image_id in dict.fromkeys(self.image_ids):  # once each: a strip's run stays contiguous
            present = [c for c in annotations.classes_present(image_id) if c in self.by_class]
            if not present:
                continue
            masks = annotations.masks(image_id)
            for class_id in present:
                start = len(self.by_class[class_id])
                count, labels, stats, _ = cv2.connectedComponentsWithStats(masks[class_id - 1], connectivity=8)
                for k in range(1, count):
                    left, top, width, height, area = (int(v) for v in stats[k])
                    if area < min_area:
                        continue
                    box = labels[top:top + height, left:left + width] == k
                    self.by_class[class_id].append(
                        Instance(image_id, class_id, top, left, np.packbits(box.ravel()), height, width))
                if len(self.by_class[class_id]) > start:
                    self.spans[image_id, class_id] = (start, len(self.by_class[class_id]))
        self.classes = [c for c, found in self.by_class.items() if found]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def source_ids(self) -> set[str]:
        """The strips any pasted pixel can come from."""
        return {i.image_id for found in self.by_class.values() for i in found}

    def pixels(self, instance: Instance, margin: int = 0) -> np.ndarray:
        """uint8 [height + 2 margin, width + 2 margin, 3]: the strip's pixels in
        the instance's box grown by ``margin`` (reflected past the strip's edge)."""
        image = read_image(self.annotations.path(instance.image_id))
        if margin:
            image = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REFLECT)
        return image[instance.top:instance.top + instance.height + 2 * margin,
                     instance.left:instance.left + instance.width + 2 * margin]


class CopyPaste(A.DualTransform):
    """Paste 1..``max_pastes`` instances of ``pool`` (a class drawn uniformly
    among its classes, then an instance of it) into the image, with
    probability ``p``. ``blend``: "alpha" (alpha ramping from the instance's
    edge to 1 over ``feather`` pixels inside it) or "poisson"
    (``cv2.seamlessClone`` of the instance, kept inside its mask). An
    instance larger than the crop is cut to a random crop-sized window of it.
    Targets: the image and the four class masks (``masks=[4, h, w]``); called
    with ``image_id=`` (the strip's id, as the training dataset does), it
    pastes only instances of other strips."""

    def __init__(self, pool: InstancePool, max_pastes: int = 1, blend: str = "alpha", feather: int = 3,
                 p: float = 0.5):
        super().__init__(p=p)
        if blend not in ("alpha", "poisson"):
            raise ValueError(f"blend must be 'alpha' or 'poisson', got {blend!r}")
        if max_pastes < 1:
            raise ValueError(f"max_pastes must be >= 1, got {max_pastes}")
        self.pool, self.max_pastes, self.blend, self.feather = pool, int(max_pastes), blend, int(feather)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = data["image"].shape[:2]
        pastes = []
        if not self.pool.classes:
            return {"pastes": pastes}
        rng = self.random_generator
        own = data.get("image_id")  # the strip being augmented, when the caller names it: never its own defects
        for _ in range(int(rng.integers(1, self.max_pastes + 1))):
            class_id = self.pool.classes[int(rng.integers(len(self.pool.classes)))]
            found = self.pool.by_class[class_id]
            # an index among the instances of other strips: the strip's own run [start, stop) is skipped
            start, stop = self.pool.spans.get((own, class_id), (0, 0))
            if len(found) == stop - start:
                continue
            k = int(rng.integers(len(found) - (stop - start)))
            instance = found[k + (stop - start) if k >= start else k]
            # Poisson blending needs the source's edge around the instance: a margin of its pixels
            margin = POISSON_MARGIN if self.blend == "poisson" else 0
            mask, pixels = np.pad(instance.mask(), margin), self.pool.pixels(instance, margin)
            # cut to the crop: a random window of an instance larger than it
            h, w = min(mask.shape[0], height), min(mask.shape[1], width)
            y0 = int(rng.integers(mask.shape[0] - h + 1))
            x0 = int(rng.integers(mask.shape[1] - w + 1))
            mask, pixels = mask[y0:y0 + h, x0:x0 + w], pixels[y0:y0 + h, x0:x0 + w]
            if not mask.any():
                continue
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            pastes.append({"class_id": class_id, "top": top, "left": left, "mask": mask, "pixels": pixels,
                           "source": instance.image_id})
        return {"pastes": pastes}

    def apply(self, img: np.ndarray, pastes=(), **params) -> np.ndarray:
        out = img.copy()
        for paste in pastes:
            out = self._blend(out, paste)
        return out

    def apply_to_masks(self, masks, pastes=(), **params):
        out = np.array(masks, copy=True)
        for paste in pastes:
            h, w = paste["mask"].shape
            region = out[:, paste["top"]:paste["top"] + h, paste["left"]:paste["left"] + w]
            region[:, paste["mask"]] = 0
            region[paste["class_id"] - 1][paste["mask"]] = 1
        return out

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        raise TypeError("CopyPaste needs all four class masks at once: call it with masks=[4, h, w]")

    def _blend(self, image: np.ndarray, paste: dict) -> np.ndarray:
        mask, pixels, top, left = paste["mask"], paste["pixels"], paste["top"], paste["left"]
        h, w = mask.shape
        target = image[top:top + h, left:left + w]
        if self.blend == "poisson":
            blended = poisson_blend(target, pixels, mask)
        else:
            blended = alpha_blend(target, pixels, mask, self.feather)
        image[top:top + h, left:left + w] = blended
        return image

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_pastes", "blend", "feather")


def feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """float32 [h, w]: 0 outside ``mask``; inside, the distance to its edge
    over ``feather`` (at least 1/feather on the edge), capped at 1."""
    if feather <= 0:
        return mask.astype(np.float32)
    inside = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    return np.clip(inside / feather, 0.0, 1.0).astype(np.float32) * mask


def alpha_blend(target: np.ndarray, pixels: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """uint8 like ``target``: ``pixels`` over ``target`` with ``feather_alpha``; unchanged outside ``mask``."""
    alpha = feather_alpha(mask, feather)[..., None]
    blended = alpha * pixels.astype(np.float32) + (1 - alpha) * target.astype(np.float32)
    return np.where(mask[..., None], np.rint(blended).clip(0, 255).astype(np.uint8), target)


def poisson_blend(target: np.ndarray, pixels: np.ndarray, mask: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 like ``target``: ``cv2.seamlessClone`` (normal clone) of
    ``pixels`` into ``target`` inside ``mask``, unchanged outside it. The
    clone's region is ``mask`` grown by POISSON_MARGIN pixels (``pixels``
    should hold the source around the instance there), so the gradient at
    the instance's edge, its contrast, is carried over; then only the
    pixels of ``mask`` are kept. Both images are padded by ``pad`` reflected
    pixels so the clone never touches a border."""
    src = cv2.copyMakeBorder(pixels, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(target, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * POISSON_MARGIN - 1,) * 2, np.uint8))
    clone_mask = np.pad(grown, pad) * 255
    x, y, bw, bh = cv2.boundingRect(clone_mask)
    # seamlessClone puts the centre of the mask's bounding box at ``center``: keep it where it was
    center = (x + bw // 2, y + bh // 2)
    try:
        cloned = cv2.seamlessClone(src, dst, clone_mask, center, cv2.NORMAL_CLONE)[pad:-pad, pad:-pad]
    except cv2.error:  # a degenerate mask (a line a pixel wide): paste as is
        cloned = pixels
    return np.where(mask[..., None], cloned, target)
