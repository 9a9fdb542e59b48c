"""K-fold splits: by image, balanced per class, written once and reused."""

import numpy as np
import pandas as pd
import pytest

from datasets.severstal import Annotations
from datasets.splits import SplitError, fold_image_ids, label_matrix, load_or_make_folds, make_folds

K = 5


def synthetic_annotations(folder, n=300, seed=0) -> Annotations:
    """Class sets in roughly Severstal's proportions: about half defect-free,
    class 3 the most common, a few images with two classes."""
    rng = np.random.default_rng(seed)
    image_ids = [f"{i:05d}.jpg" for i in range(n)]
    rles = {}
    for image_id in image_ids:
        if rng.random() < 0.5:
            continue
        classes = {int(rng.choice([1, 2, 3, 4], p=[0.12, 0.04, 0.72, 0.12]))}
        if rng.random() < 0.1:
            classes.add(int(rng.choice([1, 4])))
        rles[image_id] = {c: "1 1" for c in classes}
    return Annotations(folder, image_ids, rles, (256, 1600))


@pytest.fixture
def annotations(tmp_path):
    return synthetic_annotations(tmp_path / "train_images")


def test_every_image_in_exactly_one_fold(annotations):
    folds = make_folds(annotations, K, seed=0)
    assert list(folds.columns) == ["ImageId", "fold"]
    assert sorted(folds["ImageId"]) == sorted(annotations.image_ids)
    assert folds["ImageId"].is_unique
    assert sorted(folds["fold"].unique()) == list(range(K))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 2


def test_classes_and_defect_free_images_are_balanced(annotations):
    folds = make_folds(annotations, K, seed=0)
    labels = label_matrix(annotations, folds["ImageId"])
    per_fold = np.stack([labels[folds["fold"].to_numpy() == f].sum(0) for f in range(K)])  # [K, 5]
    assert per_fold.sum(0).min() > K  # every column is populated enough to test
    assert (np.abs(per_fold - per_fold.mean(0)) <= 2).all(), per_fold


def test_label_matrix_marks_defect_free_images(annotations):
    labels = label_matrix(annotations, annotations.image_ids)
    assert labels.shape == (300, 5)
    np.testing.assert_array_equal(labels[:, 4], labels[:, :4].sum(1) == 0)
    assert labels[:, 4].sum() == len(annotations.defect_free)


def test_same_seed_same_folds_other_seed_other_folds(annotations):
    first, again, other = make_folds(annotations, K, 0), make_folds(annotations, K, 0), make_folds(annotations, K, 1)
    pd.testing.assert_frame_equal(first, again)
    assert not first["fold"].equals(other["fold"])


def test_saved_split_is_reused_whatever_the_seed(annotations, tmp_path, capsys):
    path = tmp_path / "folds.csv"
    made = load_or_make_folds(path, annotations, K, seed=0)
    assert path.is_file() and "wrote split file" in capsys.readouterr().out
    reused = load_or_make_folds(path, annotations, K, seed=123)
    assert "reusing split file" in capsys.readouterr().out
    pd.testing.assert_frame_equal(made, reused)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_stale_split_file_names_the_file_and_the_difference(annotations, tmp_path):
    path = tmp_path / "folds.csv"
    load_or_make_folds(path, annotations, K, seed=0)
    more = Annotations(annotations.image_dir, annotations.image_ids + ["new1.jpg", "new2.jpg", "new3.jpg"])
    with pytest.raises(SplitError, match=r"3 images in .*train_images are not in split file .*folds\.csv.*delete it"):
        load_or_make_folds(path, more, K, seed=0)
    fewer = annotations.subset(annotations.image_ids[1:])
    with pytest.raises(SplitError, match=r"folds\.csv lists 1 images that are not in .*00000\.jpg"):
        load_or_make_folds(path, fewer, K, seed=0)
    with pytest.raises(SplitError, match=r"has folds \[0, 1, 2, 3, 4\], expected 0..2 for k=3"):
        load_or_make_folds(path, annotations, 3, seed=0)


def test_malformed_split_file(annotations, tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("image,fold\na.jpg,0\n")
    with pytest.raises(SplitError, match="columns"):
        load_or_make_folds(path, annotations, K, seed=0)
    folds = make_folds(annotations, K, 0)
    pd.concat([folds, folds.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(SplitError, match="more than once"):
        load_or_make_folds(path, annotations, K, seed=0)


def test_fold_image_ids_partition(annotations):
    folds = make_folds(annotations, K, seed=0)
    train, val = fold_image_ids(folds, 2)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(annotations.image_ids)
    assert val == folds["ImageId"][folds["fold"] == 2].tolist()
    with pytest.raises(ValueError, match="fold 7"):
        fold_image_ids(folds, 7)


def test_too_many_folds(annotations):
    with pytest.raises(ValueError, match="k must be in 2..3"):
        make_folds(annotations.subset(annotations.image_ids[:3]), 4, seed=0)
