"""COCO mAP of instance predictions through pycocotools' COCOeval."""

import numpy as np
import pytest
import torch

from datasets.coco import connected_components, severstal_to_coco
from datasets.rle import rle_encode
from datasets.severstal import Annotations
from inference.coco_eval import coco_map, detections_to_coco


def tiny_annotations(tmp_path):
    rng = np.random.default_rng(0)
    rles = {}
    for i in range(3):
        masks = np.zeros((4, 64, 128), np.uint8)
        masks[i % 4, 10:30, 20 + 10 * i:60 + 10 * i] = 1
        masks[3, 40:60, 90:120] = 1
        masks[3, 50:55, 5:12] = rng.integers(0, 2)
        rles[f"{i:09x}.jpg"] = {c + 1: rle_encode(m) for c, m in enumerate(masks) if m.any()}
    return Annotations(tmp_path, sorted(rles), rles, (64, 128))


def perfect_detections(annotations, image_id):
    """torchvision-style detections equal to the truth instances, score 1."""
    masks, labels, boxes = [], [], []
    for class_id, class_mask in enumerate(annotations.masks(image_id), start=1):
        for component in connected_components(class_mask):
            ys, xs = np.nonzero(component)
            masks.append(component.astype(np.float32))
            labels.append(class_id)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {"masks": torch.tensor(np.stack(masks))[:, None], "labels": torch.tensor(labels),
            "scores": torch.ones(len(labels)), "boxes": torch.tensor(boxes, dtype=torch.float32)}


def test_perfect_instances_score_ap_one(tmp_path):
    annotations = tiny_annotations(tmp_path)
    truth = severstal_to_coco(annotations)
    results = []
    for coco_id, image_id in enumerate(annotations.image_ids, start=1):
        results += detections_to_coco(perfect_detections(annotations, image_id), coco_id)
    metrics = coco_map(truth, results)
    assert metrics["segm/AP"] == pytest.approx(1.0)
    assert metrics["bbox/AP"] == pytest.approx(1.0)


def test_wrong_class_scores_zero_and_no_detections_is_zero(tmp_path):
    annotations = tiny_annotations(tmp_path)
    truth = severstal_to_coco(annotations)
    results = []
    for coco_id, image_id in enumerate(annotations.image_ids, start=1):
        detections = perfect_detections(annotations, image_id)
        detections["labels"] = detections["labels"] % 4 + 1  # every instance given another class
        results += detections_to_coco(detections, coco_id)
    assert coco_map(truth, results)["segm/AP"] == pytest.approx(0.0)
    assert coco_map(truth, [])["bbox/AP"] == 0.0
