"""The Severstal competition metric.

The score is the mean, over every (image, class) pair, of
Dice = 2|X n Y| / (|X| + |Y|), defined as 1 when both masks are empty. It is
computed from per-pair counts, never from a Dice over a flattened batch (a
different, wrong number). Per-pair counts are what ranks exchange under DDP:
gathering them and then averaging gives exactly the single-process score.
"""

from __future__ import annotations

import numpy as np
import torch

from core.classes import CLASS_IDS


def pair_counts(pred, truth) -> np.ndarray:
    """Per-(image, class) counts for the Dice.

    pred, truth: bool-like [N, C, H, W] or [C, H, W], numpy or torch (counted
    where they live: on the GPU for CUDA tensors, with numpy on the CPU, where
    torch's boolean reductions are several times slower).
    Returns int64 [N, C, 3]: |X n Y|, |X|, |Y|.
    """
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != truth shape {tuple(truth.shape)}")
    if isinstance(pred, torch.Tensor) and pred.is_cuda:
        pred, truth = pred.bool().flatten(-2), truth.bool().flatten(-2)
        counts = torch.stack([(pred & truth).sum(-1), pred.sum(-1), truth.sum(-1)], -1).cpu().numpy()
    else:
        pred, truth = _bool_numpy(pred), _bool_numpy(truth)
        pred, truth = pred.reshape(*pred.shape[:-2], -1), truth.reshape(*truth.shape[:-2], -1)
        counts = np.stack([np.count_nonzero(pred & truth, -1), np.count_nonzero(pred, -1),
                           np.count_nonzero(truth, -1)], -1)
    counts = counts.astype(np.int64)
    return counts[None] if counts.ndim == 2 else counts


def _bool_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array) != 0


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per pair from ``pair_counts`` output [..., 3]; 1 where both are empty."""
    counts = np.asarray(counts, np.float64)
    inter, n_pred, n_true = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = n_pred + n_true
    return np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1))


def kaggle_score(dice: np.ndarray) -> dict:
    """Summarise a per-pair Dice matrix [N images, 4 classes].

    Returns {"score": mean over all pairs, "per_class": {"1": .., "4": ..}}.
    """
    dice = np.asarray(dice, np.float64)
    if dice.ndim != 2 or dice.shape[1] != len(CLASS_IDS):
        raise ValueError(f"expected a Dice matrix [N, {len(CLASS_IDS)}], got shape {dice.shape}")
    if dice.shape[0] == 0:
        raise ValueError("no images to score")
    return {
        "score": float(dice.mean()),
        "per_class": {str(c): float(dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)},
    }


def empty_baseline(truth_nonempty: np.ndarray) -> dict:
    """Score of the all-empty submission, from a bool matrix [N, 4] that says
    which truth masks are non-empty."""
    return kaggle_score(np.where(np.asarray(truth_nonempty, bool), 0.0, 1.0))


def per_class_table(rows: dict[str, dict], digits: int = 4) -> str:
    """A text table of per-class results, one line per entry of ``rows``:
    label -> {"per_class": {"1": v, .., "4": v}, "score": v}, as
    ``kaggle_score`` returns ("score" may be missing: a blank cell). Columns:
    score, class 1..4; floats printed with ``digits`` decimals, ints as ints.
    Raises ValueError naming the row whose per_class keys are not "1".."4"."""
    keys = [str(c) for c in CLASS_IDS]
    label_width = max(map(len, rows), default=0) + 2
    width = max(digits + 5, len("class 4") + 2)
    lines = [" " * label_width + f"{'score':>{width}}" + "".join(f"{'class ' + k:>{width}}" for k in keys)]
    for label, row in rows.items():
        if sorted(row["per_class"]) != keys:
            raise ValueError(f"row {label!r}: per_class has keys {sorted(row['per_class'])}, expected {keys}")
        cells = [row.get("score")] + [row["per_class"][k] for k in keys]
        lines.append(f"{label:<{label_width}}" + "".join(_cell(v, width, digits) for v in cells))
    return "\n".join(lines)


def _cell(value, width: int, digits: int) -> str:
    if value is None:
        return " " * width
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:>{width}d}"
    return f"{value:>{width}.{digits}f}"
