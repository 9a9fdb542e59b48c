"""models/anomaly_score.py and scripts/anomaly_score_study.py: image-level
statistics of an anomaly map that ignore the frame beyond the strip."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from inference.image_scores import write_anomaly_png
from models.anomaly_score import image_score, on_strip_mask

REPO = Path(__file__).resolve().parents[1]
H, W, FRAME = 64, 200, 40  # the last FRAME columns are the black frame beyond the strip


def strip_and_map(defect: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 [H, W], anomaly float32 [H, W]): steel at grey 120 with a black
    frame on the right; the map is low noise, a bright line at the frame's edge
    (the autoencoder's error there) and, with ``defect``, a 10x10 blob."""
    rng = np.random.default_rng(seed)
    grey = np.full((H, W), 120, np.uint8)
    grey[:, W - FRAME:] = 0
    anomaly = rng.uniform(0, 0.1, (H, W)).astype(np.float32)
    anomaly[:, W - FRAME - 3: W - FRAME + 3] = rng.uniform(0.6, 0.9)  # frame edge: any strip
    if defect:
        anomaly[20:30, 50:60] = rng.uniform(0.3, 0.5)
    return grey, anomaly


def test_on_strip_mask_keeps_steel_away_from_the_frame():
    grey, _ = strip_and_map(False, 0)
    assert on_strip_mask(grey, 0)[:, : W - FRAME - 5].all() and not on_strip_mask(grey, 0)[:, W - FRAME + 5:].any()
    # the 9x9 mean reaches 4 px into the frame; a margin of 10 px ends the steel 6 px before it
    assert not on_strip_mask(grey, 10)[:, W - FRAME - 6:].any() and on_strip_mask(grey, 10)[:, : W - FRAME - 7].all()
    assert on_strip_mask(np.full((H, W), 120, np.uint8), 16).all()  # no frame: every pixel is steel


def test_statistics_of_a_strip_with_a_frame_edge_and_a_defect():
    grey, anomaly = strip_and_map(True, 1)
    blob = float(anomaly[25, 55])
    assert image_score(anomaly, grey, "max") == pytest.approx(float(anomaly.max())) and anomaly.max() > blob
    assert image_score(anomaly, grey, "max_on_strip", margin=8) == pytest.approx(blob)
    assert image_score(anomaly, grey, "top_mean", margin=8, k=100) == pytest.approx(blob)  # the blob's 100 pixels
    on = anomaly[on_strip_mask(grey, 8)]
    assert image_score(anomaly, grey, "excess", margin=8) == pytest.approx(blob - float(np.median(on)))
    assert image_score(anomaly, np.zeros_like(grey), "max_on_strip") == 0.0  # no steel at all


@pytest.mark.parametrize("kwargs, message", [({"statistic": "mean"}, "unknown anomaly statistic 'mean'"),
                                             ({"grey": np.zeros((3, 3))}, "differ in size")])
def test_bad_arguments_are_named(kwargs, message):
    grey, anomaly = strip_and_map(False, 0)
    with pytest.raises(ValueError, match=message):
        image_score(anomaly, kwargs.pop("grey", grey), **kwargs)


def test_study_ranks_the_statistic_that_ignores_the_frame_first(tmp_path):
    images, maps = tmp_path / "images", tmp_path / "anomaly"
    images.mkdir()
    rows = []
    for i in range(12):
        grey, anomaly = strip_and_map(defect=i % 2 == 1, seed=i)
        name = f"{i:02d}.png"
        cv2.imwrite(str(images / name), grey)
        write_anomaly_png(maps / f"{i:02d}.png", anomaly)
        rows.append((name, 3, "1 10" if i % 2 else ""))
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp_path / "truth.csv", index=False)
    study = runpy.run_path(str(REPO / "scripts/anomaly_score_study.py"))
    table = study["main"](["--anomaly", str(maps), "--images", str(images), "--truth", str(tmp_path / "truth.csv"),
                           "--margins", "0,8", "--ks", "100", "--json", str(tmp_path / "table.json")])
    by = {(r["statistic"], r.get("margin"), r.get("k")): r["auroc"] for r in table}
    assert by[("max", None, None)] < 0.8  # the frame edge, not the defect, sets the maximum
    assert by[("max_on_strip", 8, None)] == 1.0 and by[("top_mean", 8, 100)] == 1.0
    assert table[0]["auroc"] == 1.0 and json.loads((tmp_path / "table.json").read_text()) == table
