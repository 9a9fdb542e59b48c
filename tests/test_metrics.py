"""The Kaggle metric against hand-computed cases."""

import numpy as np
import pytest
import torch

from inference.metrics import dice_from_counts, empty_baseline, kaggle_score, pair_counts


def masks(*pixel_lists, shape=(4, 4)) -> np.ndarray:
    """bool [len(pixel_lists), H, W] with the given (row, col) pixels set."""
    out = np.zeros((len(pixel_lists), *shape), bool)
    for i, pixels in enumerate(pixel_lists):
        for r, c in pixels:
            out[i, r, c] = True
    return out


def dice(pred, truth) -> np.ndarray:
    return dice_from_counts(pair_counts(pred, truth))


def test_both_empty_is_one():
    empty = masks([])
    assert dice(empty, empty).tolist() == [[1.0]]


def test_one_false_pixel_on_an_empty_pair_is_zero():
    assert dice(masks([(2, 3)]), masks([])).tolist() == [[0.0]]
    assert dice(masks([]), masks([(2, 3)])).tolist() == [[0.0]]


def test_partial_overlap_by_hand():
    pred = masks([(0, 0), (0, 1), (1, 1)])  # 3 pixels
    truth = masks([(0, 1), (3, 3)])  # 2 pixels, 1 shared
    assert pair_counts(pred, truth).tolist() == [[[1, 3, 2]]]
    assert dice(pred, truth)[0, 0] == pytest.approx(2 * 1 / 5)


def test_pair_counts_shapes_and_torch_input():
    pred = np.random.default_rng(0).random((2, 4, 8, 8)) < 0.5
    truth = np.random.default_rng(1).random((2, 4, 8, 8)) < 0.5
    counts = pair_counts(pred, truth)
    assert counts.shape == (2, 4, 3) and counts.dtype == np.int64
    np.testing.assert_array_equal(pair_counts(torch.from_numpy(pred), torch.from_numpy(truth)), counts)
    np.testing.assert_array_equal(counts[1, 2], [(pred[1, 2] & truth[1, 2]).sum(), pred[1, 2].sum(), truth[1, 2].sum()])
    with pytest.raises(ValueError, match="prediction shape"):
        pair_counts(pred, truth[:, :3])


def test_kaggle_score_is_a_mean_over_pairs_not_a_flattened_dice():
    # Image 0, class 1: a big mask predicted perfectly. Image 1, class 1: one false pixel.
    # Every other pair is empty in both.
    pred = np.zeros((2, 4, 4, 4), bool)
    truth = np.zeros((2, 4, 4, 4), bool)
    pred[0, 0], truth[0, 0] = True, True
    pred[1, 0, 0, 0] = True
    result = kaggle_score(dice(pred, truth))
    assert result["score"] == pytest.approx((1 + 0 + 6 * 1) / 8)
    assert result["per_class"] == {"1": 0.5, "2": 1.0, "3": 1.0, "4": 1.0}
    flat_dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert flat_dice == pytest.approx(32 / 33) and result["score"] != pytest.approx(flat_dice)


def test_kaggle_score_checks_its_input():
    with pytest.raises(ValueError, match=r"expected a Dice matrix \[N, 4\]"):
        kaggle_score(np.ones((3, 2)))
    with pytest.raises(ValueError, match="no images"):
        kaggle_score(np.ones((0, 4)))


def test_empty_baseline():
    nonempty = np.array([[True, False, False, False],
                         [False, False, True, True],
                         [False, False, False, False]])
    result = empty_baseline(nonempty)
    assert result["score"] == pytest.approx(9 / 12)
    assert result["per_class"] == pytest.approx({"1": 2 / 3, "2": 1.0, "3": 2 / 3, "4": 2 / 3})
    empty_pred = np.zeros((3, 4, 2, 2), bool)
    truth = np.broadcast_to(nonempty[:, :, None, None], empty_pred.shape).copy()
    assert kaggle_score(dice(empty_pred, truth)) == result
