"""Instance-segmentation dataset for Mask R-CNN: the semantic dataset's
crops and augmentation, with one instance per connected component of each
class mask."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .io import to_tensor
from .semantic import SeverstalSegmentation


def instances_from_masks(masks: np.ndarray, min_area: int) -> dict[str, torch.Tensor]:
    """Connected components (8-connectivity) of uint8 masks [4, H, W] as a
    torchvision detection target without ``image_id``: ``boxes`` float32
    [N, 4] xyxy with exclusive x2, y2 (x_max + 1, y_max + 1, so never
    degenerate), ``labels`` int64 [N] in 1..4, ``masks`` uint8 [N, H, W] in
    {0, 1}, ``area`` float32 [N] (pixels), ``iscrowd`` int64 [N] zeros.
    Components with fewer than ``min_area`` pixels are dropped."""
    boxes, labels, areas, instance_masks = [], [], [], []
    for class_index, mask in enumerate(masks):
        _, component, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area)  # label 0 is background
        x, y, w, h, area = stats[keep].T
        boxes.append(np.stack([x, y, x + w, y + h], axis=1))
        labels.append(np.full(keep.size, class_index + 1))
        areas.append(area)
        instance_masks.append(component[None] == keep[:, None, None])
    labels = np.concatenate(labels).astype(np.int64)
    return {
        "boxes": torch.from_numpy(np.concatenate(boxes).astype(np.float32)),
        "labels": torch.from_numpy(labels),
        "masks": torch.from_numpy(np.concatenate(instance_masks).astype(np.uint8)),
        "area": torch.from_numpy(np.concatenate(areas).astype(np.float32)),
        "iscrowd": torch.from_numpy(np.zeros_like(labels)),
    }


def collate_instances(batch) -> tuple[torch.Tensor, list[dict]]:
    """``[(image [3, H, W], target), ...]`` -> (images float32 [B, 3, H, W], targets list)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


class SeverstalInstances(SeverstalSegmentation):
    """Items are ``(image float32 [3, H, W] in [0, 1], target)``, target as
    ``instances_from_masks`` plus ``"image_id": str`` and ``"semantic":
    float32 [4, H, W]`` (the semantic dataset's masks). Crops, defect-biased
    sampling and transforms are those of ``SeverstalSegmentation``;
    components smaller than ``min_area`` pixels are not instances (they stay
    in ``semantic``)."""

    collate_fn = staticmethod(collate_instances)

    def __init__(self, annotations, image_ids, crop: tuple[int, int] | None = (256, 256),
                 crop_defect_prob: float = 0.8, transform=None, min_area: int = 16):
        super().__init__(annotations, image_ids, crop, crop_defect_prob, transform)
        self.min_area = min_area

    def __getitem__(self, index):
        image, masks = self.sample(index)
        target = instances_from_masks(masks, self.min_area)
        target["image_id"] = self.image_id(index)
        target["semantic"] = torch.from_numpy(masks.astype(np.float32))
        return to_tensor(image), target
