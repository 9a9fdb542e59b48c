"""scripts/evaluate.py on a tiny dataset, and inference.scoring in process.

One test starts the real script in a subprocess (which pays for importing
torch); the others call its main() in process.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets.rle import rle_encode
from datasets.severstal import COMPETITION, RERELEASED, csv_image_ids, write_mask_csv
from inference.metrics import pair_counts, per_class_table
from inference.scoring import image_pair_counts, score_csv, score_rles

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 24)
IMAGES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
TRUTH = {"a.jpg": {1: "1 4", 3: "30 10"}, "b.jpg": {4: "100 50 200 3"}}  # c, d: defect-free
# Empty submission on 4 images: wrong on the 3 non-empty pairs of 16.
EMPTY_BASELINE = 13 / 16
SHAPE_ARGS = ["--height", str(SHAPE[0]), "--width", str(SHAPE[1])]

SCRIPT = ROOT / "scripts" / "evaluate.py"
_spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)


@pytest.fixture
def data(tmp_path, blank_images):
    images = blank_images(IMAGES, SHAPE)
    truth = tmp_path / "truth.csv"
    write_mask_csv(truth, TRUTH, RERELEASED)
    return tmp_path, images, truth


def evaluate(capsys, *args) -> dict:
    """Run the script's main() with --json; its stdout must be exactly one JSON object."""
    evaluate_script.main([*SHAPE_ARGS, "--json", *map(str, args)])
    return json.loads(capsys.readouterr().out)


def test_perfect_submission_scores_one_in_a_subprocess(data):
    tmp_path, images, truth = data
    sub = tmp_path / "sub.csv"
    write_mask_csv(sub, TRUTH, RERELEASED, image_ids=IMAGES, submission=True)
    cmd = [sys.executable, str(SCRIPT), "--pred", str(sub), "--truth", str(truth), *SHAPE_ARGS, "--json"]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert result["score"] == 1.0 and result["per_class"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}
    # The submission names all 4 images (empty rows included); the truth csv only 2.
    assert result["n_images"] == 4 and result["empty_baseline"] == pytest.approx(EMPTY_BASELINE)


def test_empty_submission_scores_the_baseline(data, capsys):
    tmp_path, images, truth = data
    sub = tmp_path / "sub.csv"
    write_mask_csv(sub, {}, RERELEASED, image_ids=IMAGES, submission=True)
    result = evaluate(capsys, "--pred", sub, "--truth", truth)
    assert result["score"] == pytest.approx(result["empty_baseline"]) == pytest.approx(EMPTY_BASELINE)
    assert result["per_class"] == pytest.approx(result["empty_baseline_per_class"])
    assert result["per_class"] == pytest.approx({"1": 0.75, "2": 1.0, "3": 0.75, "4": 0.75})


def test_competition_pred_against_rereleased_truth_and_images_restrict(data, capsys):
    tmp_path, images, truth = data
    pred = {"a.jpg": {1: "3 4", 3: "30 10"}, "b.jpg": {4: "100 50 200 3"}, "c.jpg": {2: "5 1"}}
    sub = tmp_path / "sub.csv"
    write_mask_csv(sub, pred, COMPETITION, image_ids=IMAGES)
    result = evaluate(capsys, "--pred", sub, "--truth", truth)
    # a.jpg class 1: 4 predicted, 4 true, 2 shared -> 0.5; c.jpg class 2: one false pixel -> 0.
    assert result["score"] == pytest.approx((16 - 0.5 - 1) / 16)
    assert result["per_class"] == pytest.approx({"1": 3.5 / 4, "2": 0.75, "3": 1.0, "4": 1.0})
    assert result["layouts"] == {"pred": COMPETITION, "truth": RERELEASED}

    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("a.jpg", "d.jpg"):
        (subset / name).write_bytes((images / name).read_bytes())
    result = evaluate(capsys, "--pred", sub, "--truth", truth, "--images", subset)
    assert result["n_images"] == 2 and result["score"] == pytest.approx((8 - 0.5) / 8)
    assert result["empty_baseline"] == pytest.approx(6 / 8)


def test_text_report(data, capsys):
    tmp_path, images, truth = data
    evaluate_script.main(["--pred", str(truth), "--truth", str(truth), "--images", str(images), *SHAPE_ARGS])
    out = capsys.readouterr().out
    assert "rereleased layout" in out
    assert ("4 images x 4 classes\n"
            "            score   class 1   class 2   class 3   class 4\n"
            "Dice      1.00000   1.00000   1.00000   1.00000   1.00000\n"
            "empty     0.81250   0.75000   1.00000   0.75000   0.75000\n"
            "pass/fail ") in out  # then the pass/fail table (tests/test_passfail.py)
    assert out.rstrip().splitlines()[-5].startswith("any defect       1.0000   1.0000   1.0000")


def test_per_class_table_aligns_scores_ints_and_blanks():
    rows = {"tuned": {"score": 0.91234, "per_class": {"1": 0.5, "2": 1.0, "3": 0.25, "4": 0.0}},
            "min_area": {"per_class": {"1": 0, "2": 150, "3": 1600, "4": 50}}}
    assert per_class_table(rows).splitlines() == [
        "              score  class 1  class 2  class 3  class 4",
        "tuned        0.9123   0.5000   1.0000   0.2500   0.0000",
        "min_area                   0      150     1600       50",
    ]
    with pytest.raises(ValueError, match=r"row 'bad': per_class has keys \['1', '2'\], expected"):
        per_class_table({"bad": {"score": 1.0, "per_class": {"1": 1.0, "2": 1.0}}})


def test_csv_image_ids_include_empty_rows(tmp_path):
    path = tmp_path / "sub.csv"
    write_mask_csv(path, {"a_1.jpg": {2: "1 1"}}, COMPETITION, image_ids=["a_1.jpg", "b.jpg"])
    assert csv_image_ids(path) == ["a_1.jpg", "b.jpg"]
    write_mask_csv(path, {"a_1.jpg": {2: "1 1"}}, RERELEASED, image_ids=["a_1.jpg", "b.jpg"], submission=True)
    assert csv_image_ids(path) == ["a_1.jpg", "b.jpg"]


def test_image_pair_counts():
    counts = image_pair_counts({1: "3 4", 2: "1 2"}, {1: "1 4", 4: "7 3"}, SHAPE)
    assert counts.tolist() == [[2, 4, 4], [0, 2, 0], [0, 0, 0], [0, 0, 3]]


def random_class_masks(rng) -> tuple[dict[int, str], np.ndarray]:
    """4 random class masks (from empty to full): their RLEs and bool [4, H, W]."""
    masks = np.stack([rng.random(SHAPE) < rng.choice([0.0, 0.02, 0.3, 0.8, 1.0]) for _ in range(4)])
    return {c + 1: rle_encode(m) for c, m in enumerate(masks)}, masks


@pytest.mark.parametrize("seed", range(5))
def test_counts_from_runs_match_pair_counts_on_decoded_masks(seed):
    rng = np.random.default_rng(seed)
    (pred_rles, pred), (true_rles, truth) = random_class_masks(rng), random_class_masks(rng)
    np.testing.assert_array_equal(image_pair_counts(pred_rles, true_rles, SHAPE), pair_counts(pred, truth)[0])


def test_score_rles_and_score_csv_agree(data):
    tmp_path, images, truth = data
    pred = {"a.jpg": {1: "3 4"}, "d.jpg": {3: "1 1"}}
    sub = tmp_path / "sub.csv"
    write_mask_csv(sub, pred, COMPETITION, image_ids=IMAGES)
    in_memory = score_rles(pred, TRUTH, IMAGES, SHAPE)
    from_csv = score_csv(sub, truth, IMAGES, SHAPE)
    assert {k: v for k, v in from_csv.items() if k != "layouts"} == in_memory
    with pytest.raises(ValueError, match="no images"):
        score_rles(pred, TRUTH, [], SHAPE)
