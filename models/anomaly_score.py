"""Image-level scores of an anomaly map: how a strip's per-pixel map becomes
one "how anomalous is this strip" number for pass/fail.

The plain maximum is what a one-pixel glitch or the edge of the black frame
beyond a strip dominates. The statistics here are candidates, chosen on a
validation fold (scripts/anomaly_score_study.py), never on held-out strips:

- ``max``: the map's maximum;
- ``max_on_strip``: the maximum over the steel only: pixels whose 9x9 mean
  grey level is above ``OFF_STRIP_LEVEL`` (that mean reaches about 4 px into
  the frame), eroded by ``margin`` px (the frame's edge is the autoencoder's
  largest error on good strips);
- ``top_mean``: the mean of the ``k`` largest on-strip values (a defect covers
  many pixels, a glitch few);
- ``excess``: ``max_on_strip`` minus the on-strip median (a strip whose whole
  texture reconstructs worse is not a defect).
"""

from __future__ import annotations

import cv2
import numpy as np

OFF_STRIP_LEVEL = 12.0  # grey level (0..255) under which, after a 9 px blur, there is no steel (as models/classical.py)
STATISTICS = ("max", "max_on_strip", "top_mean", "excess")


def on_strip_mask(grey: np.ndarray, margin: int) -> np.ndarray:
    """grey uint8 or float [H, W] in 0..255 -> bool [H, W]: steel, ``margin``
    px inside the pixels whose 9x9 mean is above ``OFF_STRIP_LEVEL`` (which
    reach about 4 px into a black frame). All True where the frame is absent."""
    on = cv2.blur(np.asarray(grey, np.float32), (9, 9)) > OFF_STRIP_LEVEL
    if margin > 0 and not on.all():
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1, 2 * margin + 1))
        on = cv2.erode(on.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return on


def grey_of(image: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] (uint8, 0..255) -> float32 [H, W], the mean of the
    channels: the grey image both predict.py and the study score with."""
    return np.asarray(image, np.float32).mean(axis=2)


def image_score(anomaly: np.ndarray, grey: np.ndarray, statistic: str = "max", margin: int = 16,
                k: int = 500) -> float:
    """One strip's score from its anomaly map (float [H, W]) and its grey
    image (0..255, same size); higher = more anomalous. A strip with no
    steel left after the margin scores 0 (nothing to inspect)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown anomaly statistic {statistic!r}: one of {', '.join(STATISTICS)}")
    if anomaly.shape != grey.shape:
        raise ValueError(f"anomaly map {anomaly.shape} and image {grey.shape} differ in size")
    if statistic == "max":
        return float(anomaly.max())
    values = anomaly[on_strip_mask(grey, margin)]
    if values.size == 0:
        return 0.0
    if statistic == "max_on_strip":
        return float(values.max())
    if statistic == "top_mean":
        k = min(k, values.size)
        return float(np.partition(values, values.size - k)[-k:].mean())
    return float(values.max() - np.median(values))
