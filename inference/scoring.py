"""Kaggle score of a submission against ground truth, both given as RLE masks.

``score_csv`` reads two Severstal csv files (either layout each) and returns
the score, the per-class Dice and the all-empty baseline on the same images;
``score_rles`` does the same for masks already in memory (training
validation, demos). The Dice counts come straight from the runs, without
decoding a mask: |X n Y| is a sum over the runs of Y of the coverage of X,
which costs O(runs log runs) instead of O(H*W) per pair.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from core.classes import CLASS_IDS
from datasets.rle import STRIP_SHAPE, parse_runs
from datasets.severstal import csv_image_ids, read_mask_table, table_to_rles

from .metrics import dice_from_counts, empty_baseline, kaggle_score

PROGRESS_MIN_IMAGES = 500  # below this a progress bar is noise


def runs_overlap(x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray]) -> int:
    """|X n Y| of two masks given as ``parse_runs`` output (sorted, disjoint runs)."""
    x_starts, x_lengths = x
    y_starts, y_lengths = y
    ends = np.concatenate(([0], x_starts + x_lengths))  # ends[i]: end of run i-1
    before = np.concatenate(([0], np.cumsum(x_lengths)))  # before[i]: pixels of runs 0..i-1

    def covered(p: np.ndarray) -> np.ndarray:  # pixels of X below each position p
        i = np.searchsorted(x_starts, p)  # runs that start below p; only run i-1 may reach past p
        return before[i] - np.maximum(ends[i] - p, 0)

    return int((covered(y_starts + y_lengths) - covered(y_starts)).sum())


def image_pair_counts(pred: dict[int, str], truth: dict[int, str], shape=STRIP_SHAPE) -> np.ndarray:
    """Dice counts of one image: int64 [4, 3] = |X n Y|, |X|, |Y| per class
    (row c is class c+1), as inference.metrics.pair_counts gives for decoded
    masks. ``pred``/``truth`` map class id to RLE string; missing is empty."""
    counts = np.zeros((len(CLASS_IDS), 3), np.int64)
    for i, class_id in enumerate(CLASS_IDS):
        x, y = parse_runs(pred.get(class_id, ""), shape), parse_runs(truth.get(class_id, ""), shape)
        counts[i] = runs_overlap(x, y), x[1].sum(), y[1].sum()
    return counts


def score_rles(pred_rles: dict[str, dict[int, str]], true_rles: dict[str, dict[int, str]], image_ids,
               shape=STRIP_SHAPE, progress: bool = False) -> dict:
    """Score predicted masks against the truth over ``image_ids`` x classes 1..4.

    ``*_rles[image_id][class_id]`` is an RLE string; a missing entry is an empty
    mask. Returns {"score", "per_class", "empty_baseline",
    "empty_baseline_per_class", "n_images"}; scores are floats in [0, 1] and
    per-class dicts are keyed "1".."4".
    """
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("no images to score")
    show = progress and len(image_ids) >= PROGRESS_MIN_IMAGES  # disable=None: off when not a tty
    counts = np.stack([
        image_pair_counts(pred_rles.get(i, {}), true_rles.get(i, {}), shape)
        for i in tqdm(image_ids, desc="scoring", unit="img", disable=None if show else True)
    ])
    result = kaggle_score(dice_from_counts(counts))
    baseline = empty_baseline(counts[..., 2] > 0)
    result.update(empty_baseline=baseline["score"], empty_baseline_per_class=baseline["per_class"],
                  n_images=len(image_ids))
    return result


def score_csv(pred_path, truth_path, image_ids=None, shape=STRIP_SHAPE, progress: bool = False,
              verbose: bool = False) -> dict:
    """Score a submission csv against a truth csv (either layout each).

    ``image_ids``: the images to score (e.g. an image folder's listing); by
    default every image named in either file. Masks of other images are
    ignored. Returns ``score_rles``'s dict plus "layouts" {"pred", "truth"}.
    """
    pred = read_mask_table(pred_path, shape, verbose=verbose)
    truth = read_mask_table(truth_path, shape, verbose=verbose)
    if image_ids is None:
        image_ids = sorted(set(csv_image_ids(pred_path)) | set(csv_image_ids(truth_path)))
    result = score_rles(table_to_rles(pred), table_to_rles(truth), image_ids, shape, progress)
    result["layouts"] = {"pred": pred.attrs["layout"], "truth": truth.attrs["layout"]}
    return result
