"""Severstal masks <-> COCO instance segmentation (pycocotools RLE).

One COCO image per Severstal image, categories 1..4 ("defect_1".."defect_4"),
one annotation per 8-connected component of each class mask. The way back
accepts what labelling tools (CVAT, Labelbox) export: compressed RLE (str or
bytes counts), uncompressed RLE (list counts) and polygons; all instances of a
class in an image are merged (union) into one Severstal mask.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from core.classes import CLASS_IDS

from .rle import rle_decode, rle_encode
from .severstal import Annotations

CATEGORIES = [{"id": c, "name": f"defect_{c}", "supercategory": "defect"} for c in CLASS_IDS]
_CATEGORY_NAME = re.compile(r"defect_(\d+)")


def connected_components(mask: np.ndarray, min_area: int = 0) -> list[np.ndarray]:
    """Split a mask [H, W] (nonzero is foreground) into its 8-connected components.

    Returns uint8 [H, W] masks in {0, 1}, one per component of at least
    ``min_area`` pixels, in cv2's label order (raster scan from the top left).
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask != 0).astype(np.uint8), connectivity=8)
    components = []
    for label in range(1, n):
        x, y, w, h, area = stats[label]
        if area < min_area:
            continue
        component = np.zeros(mask.shape, np.uint8)
        component[y:y + h, x:x + w] = labels[y:y + h, x:x + w] == label
        components.append(component)
    return components


def instance_annotation(component: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict:
    """COCO annotation of one instance mask (uint8 [H, W]), RLE counts as str."""
    rle = coco_mask.encode(np.asfortranarray(component))
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(coco_mask.area(rle)), "bbox": coco_mask.toBbox(rle).tolist(), "iscrowd": 0,
    }


def severstal_to_coco(annotations: Annotations, min_area: int = 0) -> dict:
    """COCO instance-segmentation dict (json-serialisable) of ``annotations``.

    Images get ids 1..N in ``annotations.image_ids`` order and the size of
    ``annotations.shape``; components under ``min_area`` pixels are dropped.
    """
    height, width = annotations.shape
    images, anns = [], []
    for image_id, file_name in enumerate(annotations.image_ids, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for class_id, rle in sorted(annotations.rles.get(file_name, {}).items()):
            mask = rle_decode(rle, annotations.shape, where=file_name)
            for component in connected_components(mask, min_area):
                anns.append(instance_annotation(component, len(anns) + 1, image_id, class_id))
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def category_classes(categories: list[dict]) -> dict[int, int]:
    """Map COCO category id -> Severstal class id: by name ("defect_<k>"), which
    survives the renumbering labelling tools do, else by id when it is 1..4."""
    classes = {}
    for category in categories:
        match = _CATEGORY_NAME.fullmatch(str(category.get("name", "")))
        class_id = int(match.group(1)) if match else category["id"]
        if class_id not in CLASS_IDS:
            raise ValueError(f"COCO category {category} maps to no Severstal class {list(CLASS_IDS)}")
        classes[category["id"]] = class_id
    return classes


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of a COCO segmentation: polygons (list of flat
    [x0, y0, x1, y1, ...] lists), uncompressed RLE (list counts) or compressed
    RLE (str or bytes counts)."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"segmentation size {list(rle['size'])} != image size {[height, width]}")
    return coco_mask.decode(rle)


def coco_to_rles(coco: dict) -> dict[str, dict[int, str]]:
    """Severstal masks of a COCO dict: ``rles[file_name][class_id]`` is the RLE of
    the union of that class's instances. Every COCO image has an entry (empty
    when it has no annotation); ``file_name`` is reduced to its base name."""
    classes = category_classes(coco.get("categories", CATEGORIES))
    images = {image["id"]: image for image in coco["images"]}
    masks: dict[tuple[int, int], np.ndarray] = {}
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        try:
            mask = segmentation_mask(ann["segmentation"], image["height"], image["width"])
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"annotation {ann.get('id')} of image {image['file_name']}: {err}") from err
        key = (ann["image_id"], classes[ann["category_id"]])
        masks[key] = mask if key not in masks else masks[key] | mask
    rles: dict[str, dict[int, str]] = {Path(image["file_name"]).name: {} for image in coco["images"]}
    for (image_id, class_id), mask in sorted(masks.items()):
        if rle := rle_encode(mask):
            rles[Path(images[image_id]["file_name"]).name][class_id] = rle
    return rles
