"""Pseudo-labels: confident predictions on unlabelled (test) images, added
to training (the 1st-place recipe: two rounds gave about +0.002).

A class's *score* on an image is its image-level class probability when the
model has a classification head, else the largest pixel probability of that
class. An image is confident when every class is decisive: its score is
``>= high`` (present) or ``<= low`` (absent). A confident image's pseudo masks
are the post-processed probabilities with the absent classes emptied.

The labels are written in the competition layout (``ImageId_ClassId,
EncodedPixels``, 4 rows per image), the one layout that names a defect-free
image; ``data.pseudo_csv`` / ``data.pseudo_images`` add them to training.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .severstal import COMPETITION, write_mask_csv


def class_scores(probs: np.ndarray, class_probs: np.ndarray | None = None) -> np.ndarray:
    """float32 [4]: ``class_probs`` (float [4]) when given, else the maximum
    over pixels of ``probs`` (float [4, H, W] in [0, 1])."""
    if class_probs is not None:
        return np.asarray(class_probs, np.float32)
    return np.asarray(probs, np.float32).reshape(len(probs), -1).max(axis=1)


def select_confident(probs: np.ndarray, class_probs: np.ndarray | None, low: float, high: float) -> bool:
    """Whether every class score (``class_scores``) is ``<= low`` or ``>= high``."""
    scores = class_scores(probs, class_probs)
    return bool(np.all((scores <= low) | (scores >= high)))


def pseudo_masks(probs: np.ndarray, class_probs: np.ndarray | None, postprocess: Callable,
                 low: float, high: float) -> np.ndarray | None:
    """uint8 [4, H, W] in {0, 1}: ``postprocess(probs, class_probs)`` (e.g. an
    ``inference.postprocess.PostProcess``) with the classes scored ``<= low``
    emptied. None when a class scored ``>= high`` comes out empty (e.g. under
    a minimum area): that label would contradict its score."""
    scores = class_scores(probs, class_probs)
    masks = postprocess(probs, class_probs)
    masks[scores <= low] = 0
    return masks if masks[scores >= high].any(axis=(1, 2)).all() else None


def write_pseudo_csv(path, rles: dict[str, dict[int, str]]) -> None:
    """Write ``rles[image_id][class_id]`` (RLE strings; ``{}`` for a
    defect-free image) in the competition layout: 4 rows for every key of
    ``rles``, sorted, empty EncodedPixels for absent classes."""
    write_mask_csv(path, rles, layout=COMPETITION, image_ids=sorted(rles))
