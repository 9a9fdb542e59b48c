"""Pass/fail metrics: does a model tell a good strip from a bad one?

Image level, for "any defect" and per class: precision, recall and F1 at the
operating point the submission used (a strip fails when its post-processed
mask is non-empty), ROC AUC from image-level scores and the recall at a 1%
false-fail rate (the largest true-positive rate whose false-positive rate is
at most 1%), both with scikit-learn.

Pixel level, for anomaly maps against the union of the defect masks: ROC AUC
and PRO (per-region overlap, as in the MVTec AD benchmark: the mean over
defect regions, 8-connected components of the union, of the share of each
region above a threshold, integrated over the false-positive rate from 0 to
``PRO_MAX_FPR`` and divided by it). Both come from histograms of the 16-bit
maps, so a few hundred strips cost seconds; the AUROC is exact for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from core.classes import CLASS_IDS
from datasets.rle import rle_decode

from .image_scores import read_anomaly_png

FALSE_FAIL_RATE = 0.01  # the false-positive rate at which recall is reported
PRO_MAX_FPR = 0.3  # MVTec AD integrates PRO up to a 30% false-positive rate
LEVELS = 65536  # 16-bit anomaly maps
PRO_BINS = 1024  # PRO's thresholds: the 16-bit levels in groups of 64


def binary_counts(pred, truth) -> dict:
    """pred, truth: bool [N] (True = fails / defective). Returns tp, fp, fn, tn
    and precision, recall, F1 (precision is 1 with no predicted positive,
    recall 1 with no true positive, F1 their harmonic mean, 0 when both are 0)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp = int(np.sum(pred & truth)), int(np.sum(pred & ~truth))
    fn, tn = int(np.sum(~pred & truth)), int(np.sum(~pred & ~truth))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1}


def roc_summary(scores, truth, max_fpr: float = FALSE_FAIL_RATE) -> dict:
    """ROC AUC of ``scores`` (float [N], higher = defective) against ``truth``
    (bool [N]) and the recall at false-positive rate <= ``max_fpr``; both None
    when ``truth`` holds one class only."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return {"auroc": None, "recall_at_ffr": None}
    fpr, tpr, _ = roc_curve(truth, scores)
    return {"auroc": float(roc_auc_score(truth, scores)), "recall_at_ffr": float(tpr[fpr <= max_fpr].max())}


def passfail_report(truth_present, pred_present, scores=None) -> dict:
    """Image-level metrics, "any" and per class "1".."4".

    truth_present, pred_present: bool [N, 4] (class present in the truth /
    in the post-processed prediction); scores: float [N, 4] image-level
    class scores, float [N] (one score, any defect only) or None (no AUROC).
    """
    truth_present, pred_present = np.asarray(truth_present, bool), np.asarray(pred_present, bool)
    columns = {"any": (truth_present.any(1), pred_present.any(1))}
    columns.update({str(c): (truth_present[:, i], pred_present[:, i]) for i, c in enumerate(CLASS_IDS)})
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        per_class = scores.ndim == 2
        by_column = {"any": scores.max(1) if per_class else scores}
        if per_class:
            by_column.update({str(c): scores[:, i] for i, c in enumerate(CLASS_IDS)})
    report = {}
    for name, (truth, pred) in columns.items():
        report[name] = binary_counts(pred, truth)
        if scores is not None and name in by_column:
            report[name].update(roc_summary(by_column[name], truth))
    return report


def histogram_auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC from histograms over the same ordered levels (int [L] each):
    P(positive level > negative level) + 0.5 P(equal), what roc_auc_score gives
    for the values themselves."""
    negative, positive = np.asarray(negative, np.float64), np.asarray(positive, np.float64)
    if negative.sum() == 0 or positive.sum() == 0:
        raise ValueError("pixel AUROC needs both defect and defect-free pixels")
    below = np.cumsum(negative) - negative  # negatives strictly below each level
    return float(((below + 0.5 * negative) * positive).sum() / (negative.sum() * positive.sum()))


class PixelMetrics:
    """Accumulates 16-bit anomaly maps and their truth, strip by strip."""

    def __init__(self):
        self.negative = np.zeros(LEVELS, np.int64)
        self.positive = np.zeros(LEVELS, np.int64)
        self.regions: list[np.ndarray] = []  # per defect region: its histogram over PRO_BINS

    def add(self, anomaly: np.ndarray, defect: np.ndarray) -> None:
        """anomaly: uint16 [H, W]; defect: bool [H, W], the union of the masks."""
        anomaly, defect = np.asarray(anomaly, np.uint16), np.asarray(defect, bool)
        if anomaly.shape != defect.shape:
            raise ValueError(f"anomaly map {anomaly.shape} and truth {defect.shape} differ in shape")
        self.negative += np.bincount(anomaly[~defect], minlength=LEVELS)
        self.positive += np.bincount(anomaly[defect], minlength=LEVELS)
        n, labels = cv2.connectedComponents(defect.astype(np.uint8), connectivity=8)
        coarse = anomaly >> 6  # 65536 levels -> PRO_BINS
        for region in range(1, n):
            self.regions.append(np.bincount(coarse[labels == region], minlength=PRO_BINS))

    def result(self) -> dict:
        return {"pixel_auroc": histogram_auroc(self.negative, self.positive), "pro": self.pro(),
                "n_regions": len(self.regions)}

    def pro(self, max_fpr: float = PRO_MAX_FPR) -> float:
        """The normalised area under PRO(FPR) for FPR in [0, max_fpr]."""
        if not self.regions:
            raise ValueError("PRO needs at least one defect region")
        negative = self.negative.reshape(PRO_BINS, -1).sum(1)
        # at threshold level t (from the top), a pixel >= t is called defective
        fpr = np.cumsum(negative[::-1]) / negative.sum()
        regions = np.stack(self.regions)
        overlap = (np.cumsum(regions[:, ::-1], 1) / regions.sum(1, keepdims=True)).mean(0)
        fpr, overlap = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], overlap])
        end = np.interp(max_fpr, fpr, overlap)
        keep = fpr < max_fpr
        x, y = np.concatenate([fpr[keep], [max_fpr]]), np.concatenate([overlap[keep], [end]])
        return float(np.trapezoid(y, x) / max_fpr)


def pixel_metrics(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pixel AUROC and PRO of (uint16 anomaly map, bool defect union) pairs."""
    metrics = PixelMetrics()
    for anomaly, defect in pairs:
        metrics.add(anomaly, defect)
    return metrics.result()


def presence(rles: dict[str, dict[int, str]], image_ids) -> np.ndarray:
    """bool [N, 4]: whether each image of ``image_ids`` has a non-empty mask of
    each class in ``rles`` (image id -> class id -> RLE string)."""
    return np.array([[bool(rles.get(i, {}).get(c, "").strip()) for c in CLASS_IDS] for i in image_ids], bool)


def anomaly_pairs(folder, true_rles: dict[str, dict[int, str]], image_ids, shape):
    """(uint16 anomaly map, bool defect union) of each image, the map read
    from ``folder/<stem>.png``."""
    for image_id in image_ids:
        anomaly = read_anomaly_png(Path(folder) / f"{Path(image_id).stem}.png")
        defect = np.zeros(shape, bool)
        for rle in true_rles.get(image_id, {}).values():
            defect |= rle_decode(rle, shape, where=image_id) > 0
        yield anomaly, defect


def format_passfail(report: dict, digits: int = 4) -> str:
    """``passfail_report``'s dict as a text table: one row per column ("any", "1".."4")."""
    header = f"{'pass/fail':<12}{'precision':>11}{'recall':>9}{'F1':>9}{'AUROC':>9}{'recall@1%FFR':>14}{'tp/fp/fn/tn':>18}"
    lines = [header]
    for name, row in report.items():
        label = "any defect" if name == "any" else f"class {name}"
        cells = [row["precision"], row["recall"], row["f1"]]
        text = "".join(f"{v:>{w}.{digits}f}" for v, w in zip(cells, (11, 9, 9)))
        for key, width in (("auroc", 9), ("recall_at_ffr", 14)):
            value = row.get(key)
            text += f"{value:>{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"
        counts = f"{row['tp']}/{row['fp']}/{row['fn']}/{row['tn']}"
        lines.append(f"{label:<12}{text}{counts:>18}")
    return "\n".join(lines)
