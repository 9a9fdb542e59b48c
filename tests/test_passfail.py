"""Pass/fail metrics (inference/passfail.py) against hand-computed cases and
scikit-learn, the score and anomaly-map files, and evaluate.py's report."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from datasets.rle import rle_encode
from datasets.severstal import RERELEASED, write_mask_csv
from inference.image_scores import read_anomaly_png, read_scores_csv, write_anomaly_png, write_scores_csv
from inference.passfail import (
    PixelMetrics,
    binary_counts,
    histogram_auroc,
    passfail_report,
    pixel_metrics,
    presence,
    roc_summary,
)
from scripts import evaluate


def test_binary_counts_by_hand():
    result = binary_counts(pred=[1, 1, 0, 0, 1, 1], truth=[1, 0, 1, 0, 1, 1])
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (3, 1, 1, 1)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(3 / 4)


def test_binary_counts_edge_cases():
    nothing_flagged = binary_counts([0, 0], [1, 0])
    assert nothing_flagged["precision"] == 1.0 and nothing_flagged["recall"] == 0.0 and nothing_flagged["f1"] == 0.0
    nothing_to_find = binary_counts([1, 0], [0, 0])
    assert nothing_to_find["recall"] == 1.0 and nothing_to_find["precision"] == 0.0


def test_report_any_defect_and_per_class_by_hand():
    truth = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    pred = np.array([[0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    scores = np.array([[0.2, 0.1, 0.9, 0.0], [0.1, 0.0, 0.8, 0.0], [0.0, 0.7, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1]])
    report = passfail_report(truth, pred, scores)
    # any defect: images 0, 1 defective; 0, 1, 2 flagged
    assert (report["any"]["tp"], report["any"]["fp"], report["any"]["fn"], report["any"]["tn"]) == (2, 1, 0, 1)
    assert report["any"]["precision"] == pytest.approx(2 / 3)
    # any-defect scores (max per image) 0.9, 0.8, 0.7, 0.1: both defective above both good
    assert report["any"]["auroc"] == 1.0 and report["any"]["recall_at_ffr"] == 1.0
    # class 1: image 0 has it, flagged nowhere; its score 0.2 beats 0.1, 0.0, 0.1 (two ties below)
    assert (report["1"]["tp"], report["1"]["fn"]) == (0, 1)
    assert report["1"]["auroc"] == pytest.approx(1.0)
    # class 2 is in no truth: no AUROC
    assert report["2"]["auroc"] is None and report["2"]["fp"] == 1


def test_roc_summary_matches_sklearn_and_recall_at_one_percent():
    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.4
    scores = rng.normal(truth * 1.0, 1.0).round(1)  # ties
    result = roc_summary(scores, truth)
    assert result["auroc"] == pytest.approx(roc_auc_score(truth, scores))
    # recall at 1% false fails by brute force: the best recall over thresholds that fail <= 1% of good strips
    candidates = [t for t in np.unique(scores) if (scores[~truth] >= t).mean() <= 0.01]
    assert result["recall_at_ffr"] == pytest.approx(max((scores[truth] >= t).mean() for t in candidates))
    assert 0 < result["recall_at_ffr"] < 1


def test_histogram_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    negative = rng.integers(0, 50, 3000)
    positive = rng.integers(20, 70, 700)
    values = np.concatenate([negative, positive])
    labels = np.r_[np.zeros(len(negative)), np.ones(len(positive))]
    hist = lambda v: np.bincount(v, minlength=70)  # noqa: E731
    assert histogram_auroc(hist(negative), hist(positive)) == pytest.approx(roc_auc_score(labels, values), abs=1e-12)


def test_pixel_auroc_against_sklearn_on_maps():
    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(3):
        defect = np.zeros((32, 48), bool)
        defect[5:12, 10:30] = True
        anomaly = rng.integers(0, 40000, (32, 48)).astype(np.uint16)
        anomaly[defect] += 20000
        pairs.append((anomaly, defect))
    result = pixel_metrics(pairs)
    values = np.concatenate([a.ravel() for a, _ in pairs])
    labels = np.concatenate([d.ravel() for _, d in pairs])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-12)
    assert result["n_regions"] == 3


def test_pro_by_hand():
    defect = np.zeros((20, 20), bool)
    defect[2:7, 2:12] = True  # one region of 50 pixels
    perfect = np.where(defect, 65535, 0).astype(np.uint16)
    assert pixel_metrics([(perfect, defect)])["pro"] == pytest.approx(1.0)
    half = np.where(defect, 65535, 6400).astype(np.uint16)
    half[2:7, 7:12] = 0  # half the region below every good pixel: found only past FPR 1
    assert pixel_metrics([(half, defect)])["pro"] == pytest.approx(0.5)
    tied = perfect.copy()
    tied[2:7, 7:12] = 0  # tied with every good pixel: overlap and FPR grow together, 0.5 -> 1 as FPR 0 -> 1
    assert pixel_metrics([(tied, defect)])["pro"] == pytest.approx(0.5 + 0.5 * 0.3 / 2)
    # two regions, one found, one missed: PRO averages regions, not pixels
    metrics = PixelMetrics()
    big = np.zeros((20, 20), bool)
    big[0:10, 0:10] = True
    small = np.zeros((20, 20), bool)
    small[15:17, 15:17] = True
    anomaly = np.where(big, 65535, 6400).astype(np.uint16)
    anomaly[small] = 0
    metrics.add(anomaly, big | small)
    assert metrics.pro() == pytest.approx(0.5)


def test_anomaly_png_and_scores_csv_round_trip(tmp_path):
    anomaly = np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(32, 64)
    write_anomaly_png(tmp_path / "a.png", anomaly)
    values = read_anomaly_png(tmp_path / "a.png")
    assert values.dtype == np.uint16 and values.max() == 65535 and values.min() == 0
    assert np.abs(values / 65535 - anomaly).max() < 1e-4
    write_scores_csv(tmp_path / "s.csv", {"a.jpg": [0.1, 0.9, 0.2, 0.3], "b.jpg": [0, 0, 0, 0.5]}, per_class=True)
    table = read_scores_csv(tmp_path / "s.csv", ["b.jpg", "a.jpg"])
    assert table["score"].tolist() == [0.5, 0.9] and table["score_2"].tolist() == [0.0, 0.9]
    with pytest.raises(ValueError, match="c.jpg"):
        read_scores_csv(tmp_path / "s.csv", ["c.jpg"])


def test_evaluate_reports_passfail_and_pixel_metrics(tmp_path, capsys):
    shape = (256, 1600)
    mask = np.zeros(shape, np.uint8)
    mask[100:120, 200:300] = 1
    truth = {"a.jpg": {3: rle_encode(mask)}, "b.jpg": {}, "c.jpg": {1: rle_encode(mask)}}
    pred = {"a.jpg": {3: rle_encode(mask)}, "b.jpg": {4: rle_encode(mask)}, "c.jpg": {}}
    write_mask_csv(tmp_path / "truth.csv", truth, RERELEASED, image_ids=list(truth))
    write_mask_csv(tmp_path / "out" / "submission.csv", pred, RERELEASED, image_ids=list(pred), submission=True)
    write_scores_csv(tmp_path / "out" / "image_scores.csv",
                     {"a.jpg": [0, 0, 0.9, 0], "b.jpg": [0, 0, 0, 0.6], "c.jpg": [0.7, 0, 0, 0]}, per_class=True)
    for name in truth:
        anomaly = np.where(mask > 0, 0.8, 0.1) if truth[name] else np.full(shape, 0.1)
        write_anomaly_png(tmp_path / "maps" / f"{name[:-4]}.png", anomaly)
    evaluate.main(["--pred", str(tmp_path / "out" / "submission.csv"), "--truth", str(tmp_path / "truth.csv"),
                   "--anomaly", str(tmp_path / "maps"), "--json"])
    result = json.loads(capsys.readouterr().out)
    any_defect = result["passfail"]["image"]["any"]
    assert (any_defect["tp"], any_defect["fp"], any_defect["fn"], any_defect["tn"]) == (1, 1, 1, 0)
    assert any_defect["auroc"] == pytest.approx(1.0)  # 0.9 and 0.7 above 0.6
    assert result["passfail"]["pixel"]["pixel_auroc"] == pytest.approx(1.0)
    assert result["passfail"]["pixel"]["pro"] == pytest.approx(1.0)


def test_presence_reads_non_empty_masks():
    rles = {"a": {1: "1 3", 3: ""}, "b": {}}
    assert presence(rles, ["a", "b", "c"]).tolist() == [[True, False, False, False], [False] * 4, [False] * 4]
