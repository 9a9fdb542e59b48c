"""Styles of the synthetic data: classic stays byte-identical to the generator
before styles, named styles differ where they say they do, every style keeps
the Kaggle class frequencies, and the style is part of the dataset's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.real_shapes import real_masks_path
from datasets.severstal import Annotations
from datasets.styles import DEFAULT_STYLE, DESCRIPTIONS, RANDOM_STYLE, STYLE_CHOICES, STYLES, Style, resolve_style
from datasets.synthetic import (
    CLASSIC,
    MARKER,
    dataset_style,
    generate_image,
    generate_split,
    image_names,
    image_rng,
    make_dataset,
    paint_class,
    plan_label_sets,
    steel_background,
)

REPO = Path(__file__).resolve().parents[1]
make_synthetic = runpy.run_path(str(REPO / "scripts/make_synthetic.py"))
needs_real_shapes = pytest.mark.skipif(not real_masks_path().is_file(),
                                       reason=f"real mask shapes not found: {real_masks_path()}")

# sha256 (first 16 hex digits) of every file of make_dataset(out, 6, 3, seed=0),
# computed with the generator as it was before styles (as of commit 52538ab). The JPEG
# bytes also depend on OpenCV's libjpeg: a new OpenCV may change them, and the
# raw pixels below tell the generator from the encoder.
CLASSIC_FILES = {
    "sample_submission.csv": "17b3c6ff4c5c8874",
    "test_images/8b2b01e7a.jpg": "e6eb1b4a64f58dcc",
    "test_images/9b4c7b718.jpg": "54c72b8fcda9bedd",
    "test_images/bac0495ff.jpg": "58e3f876002c6eac",
    "test_truth.csv": "bff4ac7fcdf590f8",
    "train.csv": "2868b4d56be48f00",
    "train_images/043b27b61.jpg": "40b706f7cac58bc9",
    "train_images/0a7d3da94.jpg": "efeeb59cfe08158d",
    "train_images/4510bdf88.jpg": "7a89d66caab646dc",
    "train_images/a30febcfd.jpg": "6a0e930b780f1d47",
    "train_images/d0327a782.jpg": "290cc8f49483b63c",
    "train_images/e9aa5979a.jpg": "623b3ec3562e53d9",
}
# The same for the raw pixels and masks (uint8 image [256, 1600] then masks
# [4, 256, 1600]) of training images of `make demo` (800 train, seed 0),
# chosen to cover every class, a two-class image and an off-strip region.
DEMO_PIXELS = {
    0: "2e234f7117d14011",  # defect-free
    1: "fa559e7080d3b388",  # class 3
    2: "bf35540373e453a8",  # class 1
    8: "b36ed071408c8f66",  # classes 2, 3
    10: "24aa70fc3549c130",  # class 3, off-strip region
    15: "5b0b001df306219d",  # classes 1, 3
    27: "0fddca5c0c84fdf2",  # class 4
    81: "1ec88c77b6f36a75",  # class 2
    159: "3a0335f7c0cabd03",  # classes 3, 4
}


def sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def file_hashes(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


def test_default_style_writes_the_files_of_the_generator_before_styles(tmp_path):
    make_dataset(tmp_path / "default", 6, 3, 0, workers=1, progress=False)
    make_dataset(tmp_path / "classic", 6, 3, 0, workers=1, progress=False, style="classic")
    assert file_hashes(tmp_path / "default") == CLASSIC_FILES
    assert file_hashes(tmp_path / "classic") == CLASSIC_FILES


@pytest.mark.parametrize("index", sorted(DEMO_PIXELS))
def test_default_style_draws_the_demo_images_of_the_generator_before_styles(index):
    classes = plan_label_sets(800, 0, 0)[index]
    image, masks = generate_image(image_rng(0, 0, index), classes)
    assert sha(image.tobytes(), masks.tobytes()) == DEMO_PIXELS[index], (index, classes)


def test_masks_keep_the_kaggle_class_frequencies_whatever_the_style():
    """SEVERSTAL.md: masks 897 / 247 / 5,150 / 801 of 7,095; 5,902 of 12,568
    images defect-free. The plan is the style's too: make_dataset draws it alone."""
    plan = plan_label_sets(10_000, 0, 0)
    masks = np.array([sum(c in labels for labels in plan) for c in (1, 2, 3, 4)])
    np.testing.assert_allclose(masks / masks.sum(), np.array([897, 247, 5150, 801]) / 7095, atol=0.01)
    assert np.mean([not labels for labels in plan]) == pytest.approx(5902 / 12568, abs=0.01)


def background_stats(style: Style, n: int = 4) -> dict[str, float]:
    """Mean grey and mean |step| along x and along y of ``n`` backgrounds."""
    images = [steel_background(np.random.default_rng(i), style) for i in range(n)]
    return {"level": float(np.mean(images)),
            "step_x": float(np.mean([np.abs(np.diff(im, axis=1)).mean() for im in images])),
            "step_y": float(np.mean([np.abs(np.diff(im, axis=0)).mean() for im in images]))}


def test_named_styles_differ_in_brightness_and_grain_direction():
    stats = {name: background_stats(style) for name, style in STYLES.items()}
    levels = {name: s["level"] for name, s in stats.items()}
    assert levels["bright_matte"] > 150 and 90 < levels["classic"] < 130 and levels["dark_rolled"] < 80
    for name in ("classic", "dark_rolled", "faint_soft"):  # marks and streaks along the strip
        assert stats[name]["step_x"] < 0.9 * stats[name]["step_y"], name
    assert 0.95 < stats["bright_matte"]["step_x"] / stats["bright_matte"]["step_y"] < 1.05  # matte: no direction
    assert stats["cross_grain"]["step_y"] < 0.7 * stats["cross_grain"]["step_x"]  # across the strip


def test_cross_grain_lighting_varies_more_along_the_strip():
    def column_spread(style):
        return np.mean([steel_background(np.random.default_rng(i), style).mean(0).std() for i in range(6)])
    assert column_spread(STYLES["cross_grain"]) > 2 * column_spread(CLASSIC)


def test_roll_imprints_repeat_once_per_turn():
    """dark_rolled's imprints alone (everything else flat): narrow bands
    across the strip, equally spaced, 150-400 px apart."""
    imprints_only = dataclasses.replace(STYLES["dark_rolled"], level=(60.0, 60.0), light_along=(0.0, 0.0),
                                        light_across=(0.0, 0.0), roll_marks=(0.0, 0.0), streaks=(0.0, 0.0),
                                        grain=(0.0, 0.0))
    for seed in range(3):
        image = steel_background(np.random.default_rng(seed), imprints_only) - 60
        np.testing.assert_allclose(image, np.broadcast_to(image[0], image.shape), atol=1e-4)
        columns = image[0]
        band = np.flatnonzero(np.abs(columns) > 2)
        runs = np.split(band, np.flatnonzero(np.diff(band) > 1) + 1)
        centres = np.array([run[np.argmax(np.abs(columns[run]))] for run in runs])
        gaps = np.diff(centres)
        assert len(centres) >= 4 and 150 <= gaps.min() and gaps.max() <= 400 and np.ptp(gaps) <= 1, centres
        assert (np.abs(columns[band]) < 13).all() and (np.abs(columns) < 0.5).mean() > 0.8


def defect_stats(style: Style, class_id: int, seeds=range(48)) -> tuple[float, float]:
    """Mean peak |contrast| of class ``class_id`` painted on flat steel, and
    the share of defects brighter than the steel, over ``seeds``."""
    style = dataclasses.replace(style, real_shapes=0.0)
    peaks, bright = [], []
    for seed in seeds:
        image = np.zeros((256, 1600), np.float32)
        mask = np.zeros((256, 1600), np.uint8)
        paint_class(np.random.default_rng(seed), image, mask, 0, 1600, class_id, style)
        peaks.append(np.abs(image).max())
        bright.append(image[mask > 0].sum() > 0)
    return float(np.mean(peaks)), float(np.mean(bright))


@pytest.mark.parametrize("class_id", [1, 2, 3, 4])
def test_faint_soft_defects_are_fainter_and_of_either_polarity(class_id):
    """Painted on flat steel, by the classes' own painters: lower peaks, and
    about as many brighter as darker (class 4 is always darker in classic)."""
    classic_peak, classic_bright = defect_stats(CLASSIC, class_id)
    faint_peak, faint_bright = defect_stats(STYLES["faint_soft"], class_id)
    assert faint_peak < 0.7 * classic_peak
    assert 0.3 <= faint_bright <= 0.7
    if class_id == 4:
        assert classic_bright == 0


@needs_real_shapes
def test_files_of_a_style_are_its_images_and_heavy_jpeg_loses_more(tmp_path):
    """dark_rolled (JPEG quality 35-59) against bright_matte (90-97): the
    stored strips are generate_split's in that style, masks exact, pixels
    within the JPEG's loss, which is larger for dark_rolled."""
    loss = {}
    for name in ("dark_rolled", "bright_matte"):
        out = tmp_path / name
        make_dataset(out, 4, 0, 2, workers=1, progress=False, style=name)
        annotations = Annotations.load(out / "train.csv", out / "train_images")
        errors = []
        for image_id, (image, masks) in zip(image_names(4, 2), generate_split(4, 2, 0, dataset_style(name, 2))):
            np.testing.assert_array_equal(annotations.masks(image_id), masks, err_msg=image_id)
            stored = cv2.imread(str(out / "train_images" / image_id), cv2.IMREAD_GRAYSCALE)
            errors.append(np.abs(stored.astype(int) - image).mean())
        loss[name] = np.mean(errors)
    assert loss["dark_rolled"] > 1.5 * loss["bright_matte"] and loss["bright_matte"] < 2


def test_random_style_comes_from_the_seed():
    assert dataset_style(RANDOM_STYLE, 1) == dataset_style(RANDOM_STYLE, 1)
    assert len({dataset_style(RANDOM_STYLE, seed) for seed in range(5)}) == 5
    assert dataset_style("bright_matte", 1) is STYLES["bright_matte"]
    with pytest.raises(ValueError, match="unknown style 'shiny'.*classic"):
        resolve_style("shiny", np.random.default_rng(0))


def test_every_named_style_is_described_and_classic_is_the_default():
    assert set(DESCRIPTIONS) == set(STYLES) and STYLE_CHOICES == (*STYLES, RANDOM_STYLE)
    assert STYLES[DEFAULT_STYLE] == Style() == CLASSIC
    assert sum(s.real_shapes > 0 for s in STYLES.values()) >= 2


def test_a_style_is_reproducible_and_part_of_the_marker(tmp_path):
    out = tmp_path / "data"
    first = make_dataset(out, 3, 1, 5, workers=1, progress=False, style="bright_matte")
    hashes = file_hashes(out)
    marker = json.loads((out / MARKER).read_text())
    assert marker["style"] == "bright_matte" and marker["style_params"] == STYLES["bright_matte"].to_dict()
    assert make_dataset(out, 3, 1, 5, workers=1, progress=False, style="bright_matte")["skipped"]
    assert not make_dataset(out, 3, 1, 5, workers=1, progress=False)["skipped"]  # classic: redrawn
    classic = file_hashes(out)  # the same names; the strips look different
    assert classic.keys() == hashes.keys() and all(classic[k] != hashes[k] for k in hashes if k.endswith(".jpg"))
    again = make_dataset(tmp_path / "again", 3, 1, 5, workers=2, progress=False, style="bright_matte", force=True)
    assert not again["skipped"] and file_hashes(tmp_path / "again") == hashes
    assert first["params"]["style_params"] == again["params"]["style_params"]


def test_a_marker_from_before_styles_still_describes_a_classic_dataset(tmp_path):
    out = tmp_path / "data"
    make_dataset(out, 3, 1, 5, workers=1, progress=False)
    marker = json.loads((out / MARKER).read_text())
    del marker["style"], marker["style_params"]
    (out / MARKER).write_text(json.dumps(marker))
    assert make_dataset(out, 3, 1, 5, workers=1, progress=False)["skipped"]
    assert not make_dataset(out, 3, 1, 5, workers=1, progress=False, style="bright_matte")["skipped"]


def test_random_style_on_the_command_line_records_what_it_drew(tmp_path, capsys):
    assert dataset_style("random", 7).real_shapes == 0  # so this runs without the real shapes too
    summary = make_synthetic["main"](["--out", str(tmp_path), "--train", "2", "--test", "1", "--seed", "7",
                                      "--style", "random", "--workers", "1", "--no-progress"])
    assert "style random, seed 7" in capsys.readouterr().out
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["style"] == "random" and marker["style_params"] == dataset_style("random", 7).to_dict()
    assert summary["params"] == {k: marker[k] for k in summary["params"]}
    with pytest.raises(SystemExit):
        make_synthetic["parse_args"](["--out", str(tmp_path), "--style", "shiny"])
