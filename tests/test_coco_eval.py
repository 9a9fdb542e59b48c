"""COCO mAP of instance predictions through pycocotools' COCOeval, and
scripts/eval_coco.py on the device it is given."""

import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.config import load_config, to_dict
from datasets.coco import connected_components, severstal_to_coco
from datasets.rle import rle_encode
from datasets.severstal import RERELEASED, Annotations, write_mask_csv
from inference.coco_eval import coco_map, detections_to_coco
from models import build_model

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- scripts/eval_coco.py


@pytest.fixture(scope="module")
def maskrcnn_checkpoint(tmp_path_factory):
    """A random Mask R-CNN of the shipped CPU config for 64x128 images, one such
    image and its truth csv: (checkpoint, image folder, truth csv)."""
    folder = tmp_path_factory.mktemp("eval_coco")
    cfg = load_config(REPO / "configs/maskrcnn_demo_cpu.yaml", ["--data.image_height=64", "--data.image_width=128"])
    torch.manual_seed(0)
    save_checkpoint({"model": build_model(cfg).state_dict(), "ema": None, "config": to_dict(cfg), "epoch": 1,
                     "step": 1, "best_score": 0.0}, folder / "best.pt")
    annotations = tiny_annotations(folder / "images")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    for image_id in annotations.image_ids[:1]:
        cv2.imwrite(str(folder / "images" / image_id), rng.integers(0, 256, (64, 128, 3), np.uint8))
    write_mask_csv(folder / "truth.csv", {i: annotations.rles[i] for i in annotations.image_ids[:1]}, RERELEASED)
    return folder / "best.pt", folder / "images", folder / "truth.csv"


def run_eval_coco(*args: str) -> dict:
    return runpy.run_path(str(REPO / "scripts/eval_coco.py"))["main"]([*map(str, args), "--json"])


def test_eval_coco_runs_on_the_device_it_is_given(maskrcnn_checkpoint, capsys):
    checkpoint, images, truth = maskrcnn_checkpoint
    metrics = run_eval_coco("--checkpoint", checkpoint, "--images", images, "--truth", truth, "--device", "cpu")
    assert json.loads(capsys.readouterr().out) == metrics
    assert set(metrics) >= {"segm/AP", "bbox/AP"} and all(-1.0 <= v <= 1.0 for v in metrics.values())  # -1: no such truth


@pytest.mark.cuda
def test_eval_coco_on_cuda_matches_the_cpu(maskrcnn_checkpoint, capsys):
    checkpoint, images, truth = maskrcnn_checkpoint
    on = {d: run_eval_coco("--checkpoint", checkpoint, "--images", images, "--truth", truth, "--device", d)
          for d in ("cpu", "cuda", "auto")}
    assert on["cuda"] == pytest.approx(on["cpu"], abs=0.02) and on["auto"] == on["cuda"]


@pytest.mark.parametrize("device, why", [("gpu", "Expected one of cpu, cuda"), ("cuda:0", "CUDA is not available")])
def test_eval_coco_refuses_a_device_it_cannot_use(maskrcnn_checkpoint, capsys, device, why):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    with pytest.raises(SystemExit):
        run_eval_coco("--checkpoint", maskrcnn_checkpoint[0], "--device", device)
    err = capsys.readouterr().err
    assert f"--device {device}: " in err and why in err
