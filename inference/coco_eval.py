"""COCO box and mask mAP of an instance model, with pycocotools' COCOeval.

The ground truth is the project's own COCO export of the Severstal masks
(``datasets.coco.severstal_to_coco``: one instance per connected component),
so the numbers are those a labelling tool's COCO file would give.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.coco import severstal_to_coco
from datasets.semantic import SeverstalSegmentation
from datasets.severstal import Annotations

STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def detections_to_coco(detections: dict, image_id: int, mask_threshold: float = 0.5) -> list[dict]:
    """COCO result entries for one image's torchvision detections."""
    masks = (detections["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
    boxes = detections["boxes"].cpu().numpy()
    results = []
    for mask, box, label, score in zip(masks, boxes, detections["labels"].tolist(), detections["scores"].tolist()):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = box.tolist()
        results.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                        "segmentation": rle, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return results


def coco_map(ground_truth: dict, results: list[dict]) -> dict[str, float]:
    """{"segm/AP": .., "segm/AP50": .., "bbox/AP": .., ...} from COCOeval, its
    printout silenced. With no detections every AP is 0."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        metrics = {}
        for iou_type in ("segm", "bbox"):
            if not results:
                metrics.update({f"{iou_type}/{name}": 0.0 for name in STATS})
                continue
            evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics.update({f"{iou_type}/{name}": float(v) for name, v in zip(STATS, evaluator.stats)})
    return metrics


@torch.inference_mode()
def evaluate_instances(model, annotations: Annotations, image_ids, device, min_area: int = 0,
                       mask_threshold: float = 0.5) -> dict[str, float]:
    """COCO mAP of ``model.detect`` on whole strips of ``image_ids``."""
    subset = annotations.subset(image_ids)
    ground_truth = severstal_to_coco(subset, min_area=min_area)
    dataset = SeverstalSegmentation(subset, subset.image_ids, crop=None)
    results = []
    for coco_id, (image, _) in enumerate(dataset, start=1):  # ids follow annotations.image_ids
        detections = model.detect(image[None].to(device))[0]
        results += detections_to_coco(detections, coco_id, mask_threshold)
    return coco_map(ground_truth, results)
