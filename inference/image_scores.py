"""Image-level scores and anomaly maps as files, written by predict.py next to
the submission and read by scripts/evaluate.py and scripts/leaderboard.py.

- ``image_scores.csv``: ``ImageId,score,score_1,score_2,score_3,score_4``, one
  row per strip: per class, the model's class probability when it has a
  classification head, else the maximum pixel probability of that class;
  ``score`` (any defect) is their maximum. Higher = more likely defective.
- ``anomaly_scores.csv`` (anomaly models only): ``ImageId,score``, the
  model's image-level statistic of the strip's anomaly map
  (``model.autoencoder.image_score``, models/anomaly_score.py; the maximum
  for a model without one), higher = more anomalous.
- ``anomaly/<stem>.png``: the anomaly map, uint16 (0..65535 for [0, 1]).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from core.classes import CLASS_IDS
from core.files import atomic_path, atomic_write_text

IMAGE_SCORES = "image_scores.csv"
ANOMALY_SCORES = "anomaly_scores.csv"
ANOMALY_DIR = "anomaly"
UINT16_MAX = 65535


def class_scores(probs: torch.Tensor, class_probs: torch.Tensor | None) -> list[float]:
    """Image-level score per class 1..4: ``class_probs`` (float [4]) when
    given, else the maximum of each class's map of ``probs`` (float [4, H, W])."""
    scores = class_probs if class_probs is not None else probs.flatten(1).amax(1)
    return [round(float(s), 6) for s in scores]


def encode_anomaly_png(anomaly: np.ndarray) -> bytes:
    """anomaly float [H, W] in [0, 1] -> the bytes of a uint16 PNG."""
    values = np.round(np.clip(anomaly, 0, 1) * UINT16_MAX).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", values)
    if not ok:
        raise OSError(f"cannot encode an anomaly map of shape {values.shape} as PNG")
    return encoded.tobytes()


def write_anomaly_png(path: Path, anomaly: np.ndarray) -> None:
    """anomaly float [H, W] in [0, 1] -> a uint16 PNG at ``path`` (atomically)."""
    encoded = encode_anomaly_png(anomaly)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded)


def read_anomaly_png(path: Path) -> np.ndarray:
    """uint16 [H, W] of a map ``write_anomaly_png`` wrote (0..65535 for [0, 1])."""
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None:
        raise FileNotFoundError(f"anomaly map not found or unreadable: {path}")
    if values.dtype != np.uint16 or values.ndim != 2:
        raise ValueError(f"{path}: expected a one-channel 16-bit PNG, got {values.dtype} {values.shape}")
    return values


def write_scores_csv(path: Path, rows: dict[str, list[float]], per_class: bool) -> None:
    """``rows``: image id -> [4] class scores (``per_class``: the
    image_scores.csv columns) or [1] score (``ImageId,score``)."""
    header = "ImageId,score" + ("".join(f",score_{c}" for c in CLASS_IDS) if per_class else "")
    lines = [header]
    for image_id, scores in rows.items():
        values = [max(scores), *scores] if per_class else list(scores)
        lines.append(",".join([image_id, *(f"{v:.6g}" for v in values)]))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_scores_csv(path, image_ids=None) -> pd.DataFrame:
    """A scores csv indexed by ImageId, with ``score`` and, when present,
    ``score_1..4``. With ``image_ids``, exactly those rows in that order; a
    missing image is a ValueError naming it."""
    table = pd.read_csv(path)
    if "ImageId" not in table or "score" not in table:
        raise ValueError(f"{path}: needs the columns ImageId,score (got {', '.join(table.columns)})")
    table = table.set_index("ImageId")
    if image_ids is not None:
        missing = [i for i in image_ids if i not in table.index]
        if missing:
            raise ValueError(f"{path} has no score for {len(missing)} images, e.g. {', '.join(missing[:3])}")
        table = table.loc[list(image_ids)]
    return table
