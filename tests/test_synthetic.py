"""The synthetic dataset: determinism, masks that round-trip through the csv,
the Kaggle layout, real-like frequencies and the geometric guarantees."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from datasets.severstal import RERELEASED, Annotations, list_images, read_mask_table
from datasets.splits import split_file_name
from datasets.synthetic import (
    ALL_CLASSES_FROM,
    MARKER,
    generate_image,
    generate_split,
    image_names,
    make_dataset,
    plan_label_sets,
)

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, SEED = 14, 6, 3
NAME = re.compile(r"^[0-9a-f]{9}\.jpg$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_dataset(out, N_TRAIN, N_TEST, SEED, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def sample():
    """300 training images drawn in memory: (label sets, images, masks)."""
    n, seed = 300, 0
    images, masks = zip(*generate_split(n, seed, split_index=0))
    return plan_label_sets(n, seed, 0), images, masks


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the marker (which records no content)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


def test_same_seed_same_bytes_whatever_the_workers(dataset, tmp_path):
    again = tmp_path / "again"
    make_dataset(again, N_TRAIN, N_TEST, SEED, workers=1, progress=False)
    assert file_bytes(again) == file_bytes(dataset)


def test_other_seed_other_files(dataset, tmp_path):
    other = tmp_path / "other"
    make_dataset(other, N_TRAIN, N_TEST, SEED + 1, workers=1, progress=False)
    a, b = file_bytes(dataset), file_bytes(other)
    assert a["train.csv"] != b["train.csv"]
    assert not set(list_images(dataset / "train_images")) & set(list_images(other / "train_images"))
    first = lambda files: next(v for k, v in files.items() if k.startswith("train_images/"))  # noqa: E731
    assert first(a) != first(b)


@pytest.mark.parametrize("split_index, split, csv", [(0, "train", "train.csv"), (1, "test", "test_truth.csv")])
def test_csv_decodes_to_the_painted_masks(dataset, split_index, split, csv):
    names = image_names(N_TRAIN + N_TEST, SEED)
    names = names[:N_TRAIN] if split == "train" else names[N_TRAIN:]
    annotations = Annotations.load(dataset / csv, dataset / f"{split}_images")
    assert sorted(annotations.image_ids) == sorted(names)
    for name, (image, masks) in zip(names, generate_split(len(names), SEED, split_index)):
        np.testing.assert_array_equal(annotations.masks(name), masks, err_msg=name)
        # the file under this name is this image (JPEG is lossy, so only close)
        stored = cv2.imread(str(dataset / f"{split}_images" / name), cv2.IMREAD_GRAYSCALE)
        assert np.abs(stored.astype(int) - image).mean() < 3, name


def test_kaggle_layout(dataset):
    train, test = list_images(dataset / "train_images"), list_images(dataset / "test_images")
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert all(NAME.match(n) for n in train + test) and not set(train) & set(test)
    for folder, name in (("train_images", train[0]), ("test_images", test[-1])):
        image = cv2.imread(str(dataset / folder / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    for csv in ("train.csv", "test_truth.csv"):
        assert (dataset / csv).read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"
        assert read_mask_table(dataset / csv).attrs["layout"] == RERELEASED
    assert (dataset / "sample_submission.csv").read_text().splitlines()[0] == "ImageId,EncodedPixels,ClassId"
    sample = pd.read_csv(dataset / "sample_submission.csv")
    assert len(sample) == 4 * N_TEST and set(sample["ImageId"]) == set(test)
    assert sample.groupby("ImageId")["ClassId"].apply(sorted).tolist() == [[1, 2, 3, 4]] * N_TEST
    assert (sample["EncodedPixels"] == "1 1").all()


def test_reuses_a_finished_dataset_and_replaces_a_different_one(tmp_path):
    out = tmp_path / "data"
    assert not make_dataset(out, 4, 2, SEED, workers=1, progress=False)["skipped"]
    stamp = (out / "train.csv").stat().st_mtime_ns
    again = make_dataset(out, 4, 2, SEED, workers=1, progress=False)
    assert again["skipped"] and (out / "train.csv").stat().st_mtime_ns == stamp
    assert not make_dataset(out, 4, 2, SEED, workers=1, progress=False, force=True)["skipped"]
    (out / split_file_name(5, 42)).write_text("ImageId,fold\n")  # a split of the old images
    make_dataset(out, 3, 1, SEED + 1, workers=1, progress=False)  # stale images and splits must go
    assert list_images(out / "train_images") == sorted(image_names(4, SEED + 1)[:3])
    assert len(list_images(out / "test_images")) == 1
    assert not (out / split_file_name(5, 42)).exists()


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_images" / "0123456789.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="did not write"):
        make_dataset(tmp_path, 2, 1, SEED, workers=1, progress=False)


def test_cli_from_the_repo_root(tmp_path):
    command = [sys.executable, "scripts/make_synthetic.py", "--out", str(tmp_path), "--train", "3",
               "--test", "2", "--seed", "1", "--workers", "1", "--no-progress"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert "generated" in first.stdout and "ms/image" in first.stdout
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert "skipped" in second.stdout


def test_names_unique_and_deterministic():
    names = image_names(500, 7)
    assert names == image_names(500, 7) and len(set(names)) == 500
    assert all(NAME.match(n) for n in names) and names != image_names(500, 8)


@pytest.mark.parametrize("n", [ALL_CLASSES_FROM, 21, 50, 57, 100])
def test_every_class_in_every_split_of_twenty_or_more(n):
    for seed in range(3):
        for split_index in (0, 1):
            present = {c for labels in plan_label_sets(n, seed, split_index) for c in labels}
            assert present == {1, 2, 3, 4}, (n, seed, split_index)


@pytest.mark.parametrize("classes", [(1, 2, 3), (5,), (3, 3)])
def test_rejects_label_sets_it_cannot_draw(classes):
    with pytest.raises(ValueError, match="classes"):
        generate_image(np.random.default_rng(0), classes)


def test_real_like_frequencies(sample):
    _, _, masks = sample
    present = np.array([m.reshape(4, -1).any(1) for m in masks])  # [N, 4]
    defect_free = (~present.any(1)).mean()
    per_class = present.sum(0)
    assert 0.35 <= defect_free <= 0.6
    assert per_class.argmax() == 2 and per_class.argmin() == 1 and per_class[1] > 0
    assert 0 < (present.sum(1) == 2).mean() <= 0.1


def test_masks_carry_exactly_the_planned_classes_one_per_pixel(sample):
    plan, _, masks = sample
    for labels, m in zip(plan, masks):
        assert m.dtype == np.uint8 and m.shape == (4, 256, 1600) and m.max() <= 1
        assert tuple(np.flatnonzero(m.reshape(4, -1).any(1)) + 1) == tuple(sorted(labels))
        assert m.sum(0, dtype=np.int32).max() <= 1


def off_strip(image: np.ndarray) -> np.ndarray:
    """Where the strip leaves the frame: near-black pixels connected to the left
    or right end of the frame (defects never reach a frame end)."""
    _, labels = cv2.connectedComponents((image <= 17).astype(np.uint8), connectivity=4)
    touching = np.setdiff1d(np.union1d(labels[:, 0], labels[:, -1]), [0])
    return np.isin(labels, touching)


def test_no_defect_where_the_strip_leaves_the_frame(sample):
    _, images, masks = sample
    regions = [off_strip(image) for image in images]
    with_region = [r.any() for r in regions]
    assert 0.07 <= np.mean(with_region) <= 0.25
    for region, m in zip(regions, masks):
        assert not m[:, region].any()
