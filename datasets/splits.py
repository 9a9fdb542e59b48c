"""K-fold splits by image, stratified by the set of defect classes present.

Each image is labelled with 5 bits (classes 1..4 present, and "defect-free")
and split by iterative multi-label stratification, so every fold gets its
share of each class and of the defect-free images. A split is written once
and reused: changing the seed or k does not silently re-split a run's data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from core.classes import CLASS_IDS
from core.files import atomic_write_text

from .severstal import Annotations

SPLIT_FILE_GLOB = "folds_k*_s*.csv"  # every name split_file_name gives


def split_file_name(k: int, seed: int) -> str:
    """The default split file's name, kept next to the data it splits."""
    return f"folds_k{k}_s{seed}.csv"


class SplitError(ValueError):
    """A split file that does not match the images or the number of folds."""


def label_matrix(annotations: Annotations, image_ids) -> np.ndarray:
    """uint8 [N, 5]: columns 0..3 = class 1..4 present, column 4 = defect-free."""
    present = np.array([[c in annotations.rles.get(i, {}) for c in CLASS_IDS] for i in image_ids], np.uint8)
    return np.concatenate([present, (present.sum(1, keepdims=True) == 0).astype(np.uint8)], axis=1)


def make_folds(annotations: Annotations, k: int, seed: int) -> pd.DataFrame:
    """DataFrame[ImageId (str), fold (int 0..k-1)], one row per image, sorted by ImageId."""
    image_ids = sorted(annotations.image_ids)
    if not 2 <= k <= len(image_ids):
        raise ValueError(f"k must be in 2..{len(image_ids)} (the number of images), got {k}")
    folds = np.zeros(len(image_ids), np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = label_matrix(annotations, image_ids)
    for fold, (_, val_index) in enumerate(splitter.split(np.zeros(len(image_ids)), labels)):
        folds[val_index] = fold
    return pd.DataFrame({"ImageId": image_ids, "fold": folds})


def load_or_make_folds(path, annotations: Annotations, k: int, seed: int, verbose: bool = True) -> pd.DataFrame:
    """Read the split at ``path`` if it exists (checked against the images and
    ``k``; ``seed`` is then unused), else make one and write it atomically."""
    path = Path(path)
    if path.is_file():
        folds = pd.read_csv(path, dtype={"ImageId": str})
        check_folds(folds, annotations, k, path)
        if verbose:
            print(f"reusing split file {path} ({len(folds)} images, {k} folds); seed {seed} not used")
        return folds.sort_values("ImageId", ignore_index=True)
    folds = make_folds(annotations, k, seed)
    atomic_write_text(path, folds.to_csv(index=False))
    if verbose:
        print(f"wrote split file {path} ({len(folds)} images, {k} folds, seed {seed})")
    return folds


def check_folds(folds: pd.DataFrame, annotations: Annotations, k: int, path) -> None:
    """Raise SplitError naming ``path`` unless ``folds`` assigns every image of
    ``annotations`` (and no other) to exactly one fold, with folds exactly 0..k-1."""
    fix = "; delete it to re-split"
    if list(folds.columns) != ["ImageId", "fold"]:
        raise SplitError(f"split file {path} has columns {list(folds.columns)}, expected ['ImageId', 'fold']{fix}")
    if (dup := folds["ImageId"][folds["ImageId"].duplicated()]).size:
        raise SplitError(f"split file {path} lists {dup.nunique()} images more than once (e.g. {dup.iloc[0]}){fix}")
    listed, present = set(folds["ImageId"]), set(annotations.image_ids)
    if unsplit := sorted(present - listed):
        raise SplitError(
            f"{len(unsplit)} images in {annotations.image_dir} are not in split file {path} "
            f"(e.g. {unsplit[0]}){fix}"
        )
    if gone := sorted(listed - present):
        raise SplitError(
            f"split file {path} lists {len(gone)} images that are not in {annotations.image_dir} "
            f"(e.g. {gone[0]}){fix}"
        )
    found = sorted(pd.unique(folds["fold"]).tolist())
    if found != list(range(k)):
        raise SplitError(f"split file {path} has folds {found}, expected 0..{k - 1} for k={k}{fix}")


def fold_image_ids(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids): images outside fold ``fold`` and inside it."""
    if fold not in set(folds["fold"]):
        raise ValueError(f"fold {fold} is not in the split (folds {sorted(set(folds['fold']))})")
    in_fold = (folds["fold"] == fold).to_numpy()
    return folds["ImageId"][~in_fold].tolist(), folds["ImageId"][in_fold].tolist()
