"""Real mask shapes in synthetic strips: a drawn shape is a real mask, flipped
and shifted along the strip; the generator's masks are those shapes with the
style's texture inside; the csv is found where documented, read once per
process, and its absence is an error naming the path."""

from __future__ import annotations

import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.real_shapes import REAL_DIR_ENV, REAL_MASKS, place_real_shape, real_data_dir, real_masks_path, real_shapes
from datasets.rle import rle_encode
from datasets.severstal import list_images, write_mask_csv
from datasets.styles import STYLES
from datasets.synthetic import generate_image, make_dataset

REPO = Path(__file__).resolve().parents[1]
H, W = 256, 1600


def l_shape(class_id: int) -> np.ndarray:
    """uint8 [256, 1600]: an L, asymmetric both ways (its 4 flips differ), 60 px wide, per class at other rows."""
    mask = np.zeros((H, W), np.uint8)
    top = 20 + 15 * class_id
    mask[top : top + 70, 300:330] = 1
    mask[top + 60 : top + 70, 300:360] = 1
    return mask


@pytest.fixture
def l_shapes(tmp_path, monkeypatch):
    """A real-masks csv with one L per class, and SEVERSTAL_REAL_DIR pointing at it."""
    write_mask_csv(tmp_path / REAL_MASKS, {"0123abcd9.jpg": {c: rle_encode(l_shape(c)) for c in (1, 2, 3, 4)}})
    monkeypatch.setenv(REAL_DIR_ENV, str(tmp_path))
    return tmp_path


def box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def flip_of(placed: np.ndarray, original: np.ndarray) -> tuple[bool, bool] | None:
    """(left-right, up-down) when ``placed`` is ``original`` so flipped and
    shifted along x only; else None."""
    for lr in (False, True):
        for ud in (False, True):
            flipped = original[::-1 if ud else 1, ::-1 if lr else 1]
            same_rows = (placed.any(1) == flipped.any(1)).all()
            if same_rows and box(placed).shape == box(flipped).shape and (box(placed) == box(flipped)).all():
                return lr, ud
    return None


def test_a_placed_shape_is_a_real_mask_flipped_and_shifted(l_shapes):
    flips, starts = set(), set()
    for seed in range(40):
        class_id = seed % 4 + 1
        placed = place_real_shape(np.random.default_rng(seed), class_id, 0, W)
        assert placed.dtype == np.uint8 and placed.shape == (H, W) and placed.max() == 1
        flip = flip_of(placed, l_shape(class_id))
        assert flip is not None, seed
        flips.add(flip)
        starts.add(int(np.flatnonzero(placed.any(0))[0]))
    assert len(flips) == 4 and len(starts) > 30


def test_a_shape_wider_than_its_range_is_cut_at_the_range(l_shapes):
    for seed in range(8):
        placed = place_real_shape(np.random.default_rng(seed), 3, 500, 540)  # the L is 60 px wide
        assert placed[:, 500:540].any() and not placed[:, :500].any() and not placed[:, 540:].any()


def test_generated_masks_are_the_real_shapes_with_texture_inside(l_shapes):
    """cross_grain draws every defect in a real shape: each mask is an L,
    and the strip inside it differs from the steel around it."""
    for seed, classes in enumerate([(1,), (2,), (3,), (4,), (1, 3), (3, 4)]):
        image, masks = generate_image(np.random.default_rng(seed), classes, STYLES["cross_grain"])
        for class_id in classes:
            mask = masks[class_id - 1]
            assert flip_of(mask, l_shape(class_id)) is not None, (seed, class_id)
            ring = cv2.dilate(mask, np.ones((15, 15), np.uint8)) - cv2.dilate(mask, np.ones((5, 5), np.uint8))
            inside, around = image[mask > 0].astype(float), image[ring > 0].astype(float)
            assert abs(inside.mean() - around.mean()) > 4 or inside.std() > 1.5 * around.std(), (seed, class_id)


def test_the_csv_is_looked_for_next_to_the_repository_unless_the_variable_says(monkeypatch, tmp_path):
    monkeypatch.delenv(REAL_DIR_ENV, raising=False)
    assert real_data_dir() == REPO.parent / "shared" / "real"
    monkeypatch.setenv(REAL_DIR_ENV, str(tmp_path))
    assert real_masks_path() == tmp_path / REAL_MASKS


def test_a_style_with_real_shapes_fails_naming_the_missing_csv(monkeypatch, tmp_path):
    monkeypatch.setenv(REAL_DIR_ENV, str(tmp_path / "nowhere"))
    missing = str(tmp_path / "nowhere" / REAL_MASKS)
    with pytest.raises(FileNotFoundError, match=REAL_DIR_ENV) as error:
        make_dataset(tmp_path / "data", 2, 1, 0, workers=1, progress=False, style="cross_grain")
    assert missing in str(error.value) and not (tmp_path / "data").exists()  # nothing written
    script = runpy.run_path(str(REPO / "scripts/make_synthetic.py"))
    with pytest.raises(SystemExit, match="real mask shapes not found"):
        script["main"](["--out", str(tmp_path / "data"), "--style", "faint_soft", "--no-progress"])
    make_dataset(tmp_path / "classic", 2, 1, 0, workers=1, progress=False, style="bright_matte")  # needs none
    assert len(list_images(tmp_path / "classic" / "train_images")) == 2


@pytest.mark.skipif(not real_masks_path().is_file(), reason=f"real mask shapes not found: {real_masks_path()}")
def test_the_shipped_real_masks_are_read_once_per_process():
    shapes = real_shapes()
    assert {c: len(v) for c, v in shapes.items()} == {1: 365, 2: 99, 3: 2061, 4: 320}  # shared/real/README.md
    assert real_shapes() is shapes
