"""Pseudo-labels: confident selection, the masks and csv scripts/pseudo_label.py
writes, and training on them (train set only, validation untouched)."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from core.config import ConfigError, load_config
from datasets.pseudo import pseudo_masks, select_confident, write_pseudo_csv
from datasets.rle import rle_decode, rle_encode
from datasets.severstal import AnnotationError, read_mask_table, write_mask_csv
from inference.postprocess import PostProcess, save_probs
from training.data import build_train_dataset, load_run_data

H, W = 32, 64
LOW, HIGH = 0.25, 0.75  # exact in float16, so the bounds themselves are testable
NO_AUGMENT = [f"--augment.{k}=0" for k in ("hflip", "vflip", "brightness_contrast", "gamma", "noise", "blur", "affine")]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pseudo_label.py"
_spec = importlib.util.spec_from_file_location("pseudo_label_script", SCRIPT)
pseudo_label_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pseudo_label_script)


def probs_with(peaks) -> np.ndarray:
    """float32 [4, H, W]: 0.05 everywhere, class c at ``peaks[c]`` on an 8x8
    block of its own (columns 16c..16c+7)."""
    probs = np.full((4, H, W), 0.05, np.float32)
    for c, peak in enumerate(peaks):
        probs[c, 8:16, 16 * c : 16 * c + 8] = peak
    return probs


# ---------------------------------------------------------------- selection and masks


@pytest.mark.parametrize("peaks, confident", [
    ([0.9, 0.1, 0.05, 0.95], True),
    ([HIGH, LOW, 0.05, 0.05], True),  # the bounds are decisive
    ([0.9, 0.5, 0.1, 0.1], False),  # class 2 undecided
    ([0.1, 0.1, 0.1, 0.7], False),
])
def test_confident_when_every_class_is_decisive(peaks, confident):
    assert select_confident(probs_with(peaks), None, LOW, HIGH) is confident


def test_class_probs_take_precedence_over_pixel_maxima():
    decisive_pixels = probs_with([0.9, 0.1, 0.1, 0.1])
    assert not select_confident(decisive_pixels, np.array([0.9, 0.5, 0.1, 0.1]), LOW, HIGH)
    undecided_pixels = probs_with([0.5, 0.5, 0.5, 0.5])
    assert select_confident(undecided_pixels, np.array([0.9, 0.1, 0.1, 0.95]), LOW, HIGH)


def test_masks_are_postprocessed_with_absent_classes_emptied():
    probs, class_probs = probs_with([0.9, 0.6, 0.05, 0.8]), np.array([0.9, 0.1, 0.05, 0.8])
    postprocess = PostProcess(threshold=[0.5, 0.5, 0.5, 0.7])
    expected = postprocess(probs, class_probs)
    assert expected[1].any()  # class 2 passes the threshold but its class probability says absent
    expected[1] = 0
    np.testing.assert_array_equal(pseudo_masks(probs, class_probs, postprocess, LOW, HIGH), expected)


def test_a_present_class_wiped_by_postprocessing_is_no_label():
    probs = probs_with([0.9, 0.05, 0.05, 0.05])  # 64 class-1 pixels
    assert pseudo_masks(probs, None, PostProcess(min_total_area=[100, 0, 0, 0]), LOW, HIGH) is None


# ---------------------------------------------------------------- the script


def write_probs_images(folder: Path, probs_dir: Path, peaks: dict) -> None:
    """A black image per name; an npz of ``probs_with(peaks[name])`` unless None."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, image_peaks in peaks.items():
        cv2.imwrite(str(folder / name), np.zeros((H, W), np.uint8))
        if image_peaks is not None:
            save_probs(probs_dir / f"{Path(name).stem}.npz", probs_with(image_peaks))


def test_script_writes_confident_images_in_competition_layout(tmp_path, capsys):
    peaks = {"defect.png": [0.9, 0.1, 0.1, 0.1], "clean.png": [0.1, 0.1, 0.1, 0.1],
             "unsure.png": [0.1, 0.1, 0.5, 0.1], "no_probs.png": None}
    write_probs_images(tmp_path / "test_images", tmp_path / "probs", peaks)
    out = tmp_path / "pseudo.csv"
    pseudo_label_script.main(["--probs", str(tmp_path / "probs"), "--images", str(tmp_path / "test_images"),
                              "--out", str(out), f"--low={LOW}", f"--high={HIGH}",
                              "--postprocess.min_component_area=[10,0,0,0]"])
    assert "2 of 3 images confident" in capsys.readouterr().out
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(raw.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert raw["ImageId_ClassId"].tolist() == [f"{i}_{c}" for i in ("clean.png", "defect.png") for c in range(1, 5)]
    assert (raw["EncodedPixels"][:4] == "").all()  # the defect-free image, named explicitly
    expected = PostProcess(min_component_area=[10, 0, 0, 0])(probs_with(peaks["defect.png"]))
    table = read_mask_table(out, (H, W))
    assert table[["ImageId", "ClassId"]].values.tolist() == [["defect.png", 1]]
    np.testing.assert_array_equal(rle_decode(table["EncodedPixels"][0], (H, W)), expected[0])


def test_script_refuses_unknown_arguments_and_bad_bounds(tmp_path):
    base = ["--probs", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "p.csv")]
    for extra in (["--train.epochs=1"], ["--low=0.8", "--high=0.2"]):
        with pytest.raises(SystemExit):
            pseudo_label_script.main(base + extra)


# ---------------------------------------------------------------- training on them


def labelled_root(root: Path) -> Path:
    """6 labelled strips t0..t5.png (t0, t1 with class 3) in the Severstal layout."""
    images = root / "train_images"
    images.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(images / f"t{i}.png"), np.full((H, W), 40, np.uint8))
    write_mask_csv(root / "train.csv", {"t0.png": {3: "1 10"}, "t1.png": {3: "40 5"}})
    return root


def pseudo_data(tmp_path, names=("p0.png", "p1.png")) -> tuple[Path, Path, dict]:
    """Pseudo images (grey 200) and their csv: the first with a class-1 mask,
    the rest defect-free; ``p_unnamed.png`` is in the folder but not the csv."""
    folder = tmp_path / "test_images"
    folder.mkdir()
    for name in (*names, "p_unnamed.png"):
        cv2.imwrite(str(folder / name), np.full((H, W), 200, np.uint8))
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 20:30] = 1
    rles = {name: {} for name in names} | {names[0]: {1: rle_encode(mask)}}
    write_pseudo_csv(tmp_path / "pseudo.csv", rles)
    return tmp_path / "pseudo.csv", folder, rles


def run_config(root: Path, *overrides):
    return load_config(overrides=[f"--data.root={root}", f"--data.image_height={H}", f"--data.image_width={W}",
                                  "--data.folds=2", *overrides])


def test_pseudo_images_join_training_only(tmp_path):
    root = labelled_root(tmp_path / "data")
    csv, folder, _ = pseudo_data(tmp_path)
    plain = load_run_data(run_config(root))
    split_before = plain.split_file.read_text()
    data = load_run_data(run_config(root, f"--data.pseudo_csv={csv}", f"--data.pseudo_images={folder}"))
    assert data.train_ids == plain.train_ids + ["p0.png", "p1.png"]
    assert data.val_ids == plain.val_ids
    assert data.split_file.read_text() == split_before
    assert data.annotations.image_ids == plain.annotations.image_ids


def test_train_dataset_yields_pseudo_image_with_its_mask(tmp_path):
    root = labelled_root(tmp_path / "data")
    csv, folder, rles = pseudo_data(tmp_path)
    cfg = run_config(root, f"--data.pseudo_csv={csv}", f"--data.pseudo_images={folder}", "--data.crop_width=0",
                     *NO_AUGMENT)
    data = load_run_data(cfg)
    dataset = build_train_dataset(cfg, data, "semantic")
    image, target = dataset[data.train_ids.index("p0.png")]
    assert target["image_id"] == "p0.png"
    assert float(image.min()) == pytest.approx(200 / 255)  # read from the pseudo folder
    np.testing.assert_array_equal(target["masks"][0].numpy(), rle_decode(rles["p0.png"][1], (H, W)))
    assert target["labels"].tolist() == [1, 0, 0, 0]
    _, clean = dataset[data.train_ids.index("p1.png")]
    assert not clean["masks"].any()


def test_pseudo_ids_colliding_with_labelled_ids_fail_naming_them(tmp_path):
    root = labelled_root(tmp_path / "data")
    csv, folder, _ = pseudo_data(tmp_path, names=("p0.png", "t2.png", "t4.png"))
    cfg = run_config(root, f"--data.pseudo_csv={csv}", f"--data.pseudo_images={folder}")
    with pytest.raises(AnnotationError, match=r"2 images .* must differ\): t2\.png, t4\.png"):
        load_run_data(cfg)


def test_pseudo_csv_needs_its_images(tmp_path):
    root = labelled_root(tmp_path / "data")
    csv, folder, _ = pseudo_data(tmp_path)
    with pytest.raises(ConfigError, match="go together"):
        load_run_data(run_config(root, f"--data.pseudo_csv={csv}"))
    (folder / "p1.png").unlink()  # defect-free, so only its empty csv rows name it
    with pytest.raises(AnnotationError, match=r"names 1 images not found .*: p1\.png"):
        load_run_data(run_config(root, f"--data.pseudo_csv={csv}", f"--data.pseudo_images={folder}"))
