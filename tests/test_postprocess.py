"""Post-processing rules, their json, and the per-class tuner."""

import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.config import PostprocessConfig
from datasets.rle import rle_encode
from datasets.severstal import Annotations, write_mask_csv
from inference.metrics import dice_from_counts, kaggle_score, pair_counts
from inference.postprocess import (
    PostProcess,
    Tuner,
    _plateau_argmax,
    choose_postprocess,
    labelled_probs,
    load_probs,
    probs_path,
    save_probs,
    tune,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 32, 64


def probs_with(*boxes) -> np.ndarray:
    """float32 [4, H, W] zeros with (class index, y0, y1, x0, x1, value) boxes."""
    probs = np.zeros((4, H, W), np.float32)
    for c, y0, y1, x0, x1, value in boxes:
        probs[c, y0:y1, x0:x1] = value
    return probs


def test_threshold_is_strict_and_per_class():
    probs = probs_with((0, 0, 4, 0, 4, 0.5), (1, 0, 4, 0, 4, 0.5))
    masks = PostProcess(threshold=[0.5, 0.4, 0.5, 0.5])(probs)
    assert masks.dtype == np.uint8 and masks.shape == (4, H, W)
    assert masks[0].sum() == 0 and masks[1].sum() == 16


def test_small_components_removed_large_kept():
    probs = probs_with((2, 0, 3, 0, 3, 0.9), (2, 10, 20, 10, 20, 0.9), (2, 25, 26, 40, 41, 0.9))
    masks = PostProcess(min_component_area=[0, 0, 10, 0])(probs)
    assert masks[2].sum() == 100 and masks[2, 10:20, 10:20].all()


def test_diagonal_pixels_are_one_component():
    probs = np.zeros((4, H, W), np.float32)
    probs[0, [0, 1, 2], [0, 1, 2]] = 0.9  # 8-connected, not 4-connected
    assert PostProcess(min_component_area=[3, 0, 0, 0])(probs)[0].sum() == 3


def test_min_total_area_wipes_whole_mask():
    probs = probs_with((0, 0, 5, 0, 5, 0.9), (0, 10, 15, 10, 15, 0.9), (1, 0, 10, 0, 10, 0.9))
    masks = PostProcess(min_total_area=[51, 100, 0, 0])(probs)
    assert masks[0].sum() == 0 and masks[1].sum() == 100


def test_gate_wipes_class_below_it():
    probs = probs_with((0, 0, 5, 0, 5, 0.9), (1, 0, 5, 0, 5, 0.9))
    masks = PostProcess(gate=[0.7, 0.7, 0.0, 0.0])(probs, class_probs=np.array([0.6, 0.8, 0.0, 0.0]))
    assert masks[0].sum() == 0 and masks[1].sum() == 25
    with pytest.raises(ValueError, match="gate"):
        PostProcess(gate=[0.7, 0.0, 0.0, 0.0])(probs)


def test_json_round_trip_and_config(tmp_path):
    pp = PostProcess([0.55, 0.6, 0.45, 0.5], [150, 0, 100, 50], [600, 600, 900, 2000], [0.7, 0.7, 0.6, 0.6])
    path = tmp_path / "pp.json"
    pp.to_json(path)
    assert PostProcess.from_json(path) == pp
    assert PostProcess.from_config(PostprocessConfig(file=str(path))) == pp
    assert PostProcess.from_config(PostprocessConfig()) == PostProcess()
    path.write_text(json.dumps({"threshold": [0.5] * 4, "thresholds": [0.5] * 4}))
    with pytest.raises(ValueError, match="unknown keys"):
        PostProcess.from_json(path)
    with pytest.raises(ValueError, match="4 values"):
        PostProcess(threshold=[0.5])


def constructed_case(n: int = 12, defect: float = 0.62, distractor: float = 0.48):
    """Class 1: a true defect predicted at ``defect`` plus a distractor at
    ``distractor`` on every other image; the other classes empty and
    predicted empty."""
    samples = []
    for i in range(n):
        probs = probs_with((0, 4, 12, 4, 20, defect))
        truth = np.zeros((4, H, W), np.uint8)
        truth[0, 4:12, 4:20] = 1
        if i % 2:
            probs[0, 20:30, 30:60] = distractor
        samples.append((probs, truth))
    return samples


def score_of(pp: PostProcess, samples) -> float:
    dice = [dice_from_counts(pair_counts(pp(s[0], s[2] if len(s) > 2 else None), s[1])[0]) for s in samples]
    return kaggle_score(np.stack(dice))["score"]


@pytest.mark.parametrize("defect,distractor", [(0.62, 0.48), (0.47, 0.33)])
def test_tuner_finds_threshold_between_distractor_and_defect(defect, distractor):
    samples = constructed_case(defect=defect, distractor=distractor)
    result = tune(samples)
    assert distractor < result.postprocess.threshold[0] < defect
    assert result.after["per_class"]["1"] == pytest.approx(1.0)
    assert result.after["score"] >= result.before["score"]
    assert result.after["score"] == pytest.approx(score_of(result.postprocess, samples))
    assert result.before["score"] == pytest.approx(score_of(PostProcess(), samples))


def test_tuner_beats_a_poor_base():
    samples = constructed_case()
    result = tune(samples, base=PostProcess(threshold=[0.3] * 4))  # lets the distractor through
    assert result.before["per_class"]["1"] < 1.0 == pytest.approx(result.after["per_class"]["1"])
    assert result.after["score"] > result.before["score"]


def test_tuner_area_filters_and_gate():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        probs = (rng.random((4, H, W)) * 0.2).astype(np.float32)
        truth = np.zeros((4, H, W), np.uint8)
        probs[1, 2:4, 2:4] = 0.9  # a 4-pixel false positive on every image
        if i % 2:
            probs[1, 10:25, 10:40] = 0.9
            truth[1, 10:25, 10:40] = 1
        if i % 3 == 0:
            probs[2, 0:10, 0:10] = 0.9  # a false positive the class gate can remove
        class_probs = np.array([0.1, 0.9, 0.2 if i % 3 == 0 else 0.8, 0.1], np.float32)
        samples.append((probs, truth, class_probs))
    result = tune(samples, min_component_areas=(0, 10, 100), min_total_areas=(0, 5, 50), gates=(0.0, 0.5))
    pp = result.postprocess
    assert pp.min_component_area[1] == 10  # a 5-pixel total-area wipe would also drop the true defects
    assert pp.gate[2] == 0.5
    assert result.after["score"] == pytest.approx(1.0)
    assert result.after["score"] == pytest.approx(score_of(pp, samples))


def test_probs_file_round_trip(tmp_path):
    probs = np.random.default_rng(0).random((4, H, W)).astype(np.float32)
    save_probs(tmp_path / "a.npz", probs, class_probs=np.array([0.1, 0.2, 0.3, 0.4]))
    save_probs(tmp_path / "b.npz", probs)
    loaded, class_probs = load_probs(tmp_path / "a.npz")
    np.testing.assert_allclose(loaded, probs, atol=1e-3)
    np.testing.assert_allclose(class_probs, [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    assert load_probs(tmp_path / "b.npz")[1] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]


def test_missing_probs_array_is_an_error_naming_the_file(tmp_path):
    np.savez(tmp_path / "x.npz", masks=np.zeros((4, H, W), np.float16))
    with pytest.raises(ValueError, match=r"x\.npz has no 'probs' array \(it holds \['masks'\]\)"):
        load_probs(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="y.npz"):
        load_probs(tmp_path / "y.npz")


def test_labelled_probs_pairs_each_file_with_its_truth_at_its_size(tmp_path):
    truth = np.zeros((4, H, W), np.uint8)
    truth[2, 3:9, 10:20] = 1
    annotations = Annotations(tmp_path, ["a.jpg", "b.jpg"], {"a.jpg": {3: rle_encode(truth[2])}}, (256, 1600))
    probs = np.random.default_rng(0).random((4, H, W)).astype(np.float32)
    save_probs(probs_path(tmp_path, "a.jpg"), probs, np.array([0.1, 0.2, 0.3, 0.4]))
    save_probs(probs_path(tmp_path, "b.jpg"), probs)
    assert probs_path(tmp_path, "a.jpg") == tmp_path / "a.npz"

    (a_probs, a_truth, a_class), (b_probs, b_truth) = labelled_probs(
        {"a.jpg": tmp_path / "a.npz", "b.jpg": tmp_path / "b.npz"}, annotations)
    np.testing.assert_allclose(a_probs, probs, atol=1e-3)
    assert np.array_equal(a_truth, truth) and not b_truth.any() and b_truth.shape == (4, H, W)
    np.testing.assert_allclose(a_class, [0.1, 0.2, 0.3, 0.4])


def test_cli_tunes_saved_probabilities(tmp_path, capsys):
    probs_dir = tmp_path / "probs"
    rles = {}
    for i, (probs, truth) in enumerate(constructed_case(6)):
        save_probs(probs_dir / f"img{i}.npz", probs)
        rles[f"img{i}.jpg"] = {1: rle_encode(truth[0])}
    (probs_dir / ".img9.tmp.npz").write_bytes(b"torn")  # save_probs' temporary file, left by a killed run
    write_mask_csv(tmp_path / "train.csv", rles)
    out = tmp_path / "pp.json"
    script = runpy.run_path(str(REPO / "scripts/tune_postprocess.py"))
    script["main"](["--probs", str(probs_dir), "--truth", str(tmp_path / "train.csv"), "--out", str(out),
                    "--min-total-areas", "0", "100"])
    tuned = PostProcess.from_json(out)
    assert 0.48 < tuned.threshold[0] < 0.62
    out_lines = capsys.readouterr().out.splitlines()
    printed = out_lines[out_lines.index("6 images"):]  # after the csv reader's summary
    assert printed[1].split() == ["score", "class", "1", "class", "2", "class", "3", "class", "4"]
    assert printed[2].split()[0] == "before" and printed[3].split()[0] == "after"
    assert printed[4].split() == ["threshold", *(f"{t:.4f}" for t in tuned.threshold)]
    assert printed[6].split() == ["min_total_area", *map(str, tuned.min_total_area)]

    (probs_dir / "img0.npz").unlink()  # --images names an image without probabilities
    with pytest.raises(SystemExit, match="1 of 6 images .* have no probabilities, e.g. .*img0.npz"):
        script["main"](["--probs", str(probs_dir), "--truth", str(tmp_path / "train.csv"), "--out", str(out),
                        "--images", str(write_ids(tmp_path / "ids.txt", rles))])


def write_ids(path: Path, rles: dict) -> Path:
    path.write_text("".join(f"{image_id}\n" for image_id in rles))
    return path


def blobby_samples(n: int = 6, seed: int = 0):
    """Smooth random probabilities with blobs of many sizes, and truths that
    overlap them partly; class probabilities spread over [0, 1]."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        probs = np.stack([cv2.resize(rng.random((6, 10), np.float32), (W, H)) for _ in range(4)]) ** 2
        truth = (np.roll(probs, 3, axis=2) > 0.5).astype(np.uint8)
        samples.append((probs, truth, rng.random(4).astype(np.float32)))
    return samples


@pytest.mark.parametrize("point", [(0.3, 0, 0, 0.0), (0.45, 20, 0, 0.0), (0.5, 0, 60, 0.4), (0.6, 30, 100, 0.7)])
def test_tuner_scores_equal_applying_the_rules(point):
    """Forced to one grid point, the tuner's score (from per-component
    counts) is the score of the PostProcess applied pixel by pixel."""
    threshold, comp, total, gate = point
    samples = blobby_samples()
    result = tune(samples, [threshold], [comp], [total], [gate])
    assert result.postprocess == PostProcess([threshold] * 4, [comp] * 4, [total] * 4, [gate] * 4)
    assert result.after["score"] == pytest.approx(score_of(result.postprocess, samples), abs=1e-12)


def test_multiply_class_probs_scales_before_threshold():
    probs = np.full((4, 8, 8), 0.8, np.float32)
    post = PostProcess(multiply_class_probs=True)
    masks = post(probs, class_probs=np.array([1.0, 0.5, 0.7, 0.6], np.float32))
    assert masks.reshape(4, -1).any(1).tolist() == [True, False, True, False]  # 0.8, 0.4, 0.56, 0.48 vs 0.5
    with pytest.raises(ValueError, match="class probabilities"):
        post(probs)


@pytest.mark.parametrize("scores, expected", [
    ([0.2, 0.9, 0.4], (1,)),  # a single maximum
    ([0.5, 1.0, 1.0, 1.0, 1.0, 0.5], (2,)),  # a plateau: not its edge (1), its interior
    ([1.0, 1.0, 1.0, 0.2], (1,)),  # beyond the grid counts as the worst score
])
def test_plateau_argmax_picks_the_interior_of_ties(scores, expected):
    assert _plateau_argmax(np.array(scores)) == expected


def test_plateau_argmax_in_two_dimensions():
    scores = np.zeros((5, 6))
    scores[1:4, 0:3] = 1.0  # tied maxima: rows 1..3, columns 0..2 (column 0 on the grid's edge)
    assert _plateau_argmax(scores) == (2, 1)  # the only tie whose 3x3 neighbourhood is all ties
    scores[2, 1] = 1.0 - 1e-6  # no longer a maximum
    assert scores[_plateau_argmax(scores)] == 1.0


def test_tuners_merged_over_ranks_equal_one_tuner_over_every_image():
    """Validation under torchrun: each rank tunes its share; the merged
    tuner picks what one tuner over all images picks, with the same scores."""
    samples = blobby_samples(6)
    whole = tune(samples)
    ranks = [Tuner(), Tuner()]
    for i, sample in enumerate(samples):
        ranks[i % 2].add(*sample)
    merged = ranks[0].merge(ranks[1]).result()
    assert merged.postprocess == whole.postprocess and merged.n_images == whole.n_images == 6
    for got, want in ((merged.after, whole.after), (merged.before, whole.before)):
        assert got["score"] == pytest.approx(want["score"]) and got["per_class"] == pytest.approx(want["per_class"])
    with pytest.raises(ValueError, match="every sample or none"):
        Tuner().merge(ranks[0]).add(*samples[0][:2])


def test_choose_postprocess_says_where_the_settings_came_from(tmp_path):
    tuned = PostprocessConfig(threshold=[0.6] * 4, min_total_area=[400] * 4,
                              source="tuned on the validation fold at epoch 3 (9 images: ...)")
    chosen, origin = choose_postprocess(tuned, ["run/best.pt"])
    assert chosen.threshold == [0.6] * 4 and origin == "run/best.pt, tuned on the validation fold at epoch 3 (9 images: ...)"
    override = PostprocessConfig(threshold=[0.3] * 4, min_total_area=[400] * 4, source=tuned.source)
    chosen, origin = choose_postprocess(override, ["run/best.pt"], overridden=["threshold"])
    assert chosen.threshold == [0.3] * 4 and chosen.min_total_area == [400] * 4
    assert origin.endswith("with postprocess.threshold from the command line")
    cv_file = tmp_path / "postprocess.json"
    PostProcess(threshold=[0.7] * 4).to_json(cv_file)
    chosen, origin = choose_postprocess(tuned, ["cv/fold0/best.pt", "cv/fold1/best.pt"], cv_file=cv_file)
    assert chosen.threshold == [0.7] * 4 and "cross-validation" in origin
    chosen, origin = choose_postprocess(tuned, ["a.pt", "b.pt"])  # folds of no cross-validation: the first's
    assert chosen.threshold == [0.6] * 4 and "the first of 2 checkpoints" in origin
    by_file = PostprocessConfig(file=str(cv_file), source=tuned.source)
    assert choose_postprocess(by_file, ["run/best.pt"], overridden=["file"])[1] == f"--postprocess.file={cv_file}"
    assert choose_postprocess(PostprocessConfig(), ["x.pt"])[1] == "the config's defaults"
