"""From per-class probabilities to binary masks, and the search for the
per-class settings that maximise the Kaggle score.

Per class c (channel c = class c+1), in this order:
0. with ``multiply_class_probs``, the pixel probabilities are multiplied by
   the image-level class probability (the 4th-place recipe);
1. pixel threshold: a pixel is on where ``prob > threshold[c]`` (as the
   validation loop thresholds);
2. connected components (8-connectivity) with fewer than
   ``min_component_area[c]`` pixels are removed;
3. the mask is wiped when fewer than ``min_total_area[c]`` pixels remain;
4. the mask is wiped when the image-level class probability is below
   ``gate[c]`` (gate 0 = off).

The metric's classes are independent, so ``tune`` picks each class's
settings separately. Probability maps travel between predict.py (or
cross-validation) and the tuner as ``<image stem>.npz`` files (``save_probs``,
``probs_path``; read back with their truth by ``labelled_probs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage

from core.classes import CLASS_IDS, NUM_CLASSES
from core.config import PostprocessConfig
from core.files import atomic_write_text
from core.progress import progress
from datasets.severstal import Annotations

from .metrics import dice_from_counts, kaggle_score, pair_counts

THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
MIN_COMPONENT_AREAS = (0, 50, 100, 150, 250, 400)
MIN_TOTAL_AREAS = (0, 200, 400, 600, 900, 1200, 1600, 2000, 3000)
GATES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _default(name: str):
    return field(default_factory=lambda: list(getattr(PostprocessConfig(), name)))


@dataclass
class PostProcess:
    """Per-class settings (lists of 4, class 1..4); defaults as PostprocessConfig."""

    threshold: list[float] = _default("threshold")
    min_component_area: list[int] = _default("min_component_area")
    min_total_area: list[int] = _default("min_total_area")
    gate: list[float] = _default("gate")
    multiply_class_probs: bool = False

    def __post_init__(self):
        for f in fields(self):
            if f.name != "multiply_class_probs" and len(getattr(self, f.name)) != NUM_CLASSES:
                raise ValueError(f"PostProcess.{f.name} needs {NUM_CLASSES} values, got {getattr(self, f.name)!r}")

    @classmethod
    def from_config(cls, cfg: PostprocessConfig) -> "PostProcess":
        """The lists of ``cfg``, or the json named by ``cfg.file`` when set."""
        if cfg.file:
            return cls.from_json(cfg.file)
        return cls(list(cfg.threshold), list(cfg.min_component_area), list(cfg.min_total_area), list(cfg.gate),
                   cfg.multiply_class_probs)

    @classmethod
    def from_json(cls, path) -> "PostProcess":
        data = json.loads(Path(path).read_text())
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {valid}")
        return cls(**data)

    def to_json(self, path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    def __call__(self, probs, class_probs=None) -> np.ndarray:
        """probs: float [4, H, W] in [0, 1] (numpy or torch); class_probs:
        float [4] or None (then every gate must be 0). Returns uint8 [4, H, W]
        in {0, 1}."""
        probs = _numpy(probs, np.float32)
        if class_probs is None and (any(self.gate) or self.multiply_class_probs):
            raise ValueError(f"gate {self.gate} / multiply_class_probs={self.multiply_class_probs} need "
                             "class probabilities (a model with a classification head)")
        if self.multiply_class_probs:
            probs = probs * _numpy(class_probs, np.float32)[:, None, None]
        masks = (probs > np.asarray(self.threshold, np.float32)[:, None, None]).astype(np.uint8)
        for c in range(NUM_CLASSES):
            masks[c] = remove_small_components(masks[c], self.min_component_area[c])
        wipe = masks.reshape(NUM_CLASSES, -1).sum(1) < np.asarray(self.min_total_area)
        if class_probs is not None:
            wipe |= _numpy(class_probs, np.float32) < np.asarray(self.gate, np.float32)
        masks[wipe] = 0
        return masks


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """uint8 [H, W] in {0, 1} without its 8-connected components of fewer
    than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # background
    return keep[labels].astype(np.uint8)


def _numpy(array, dtype) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=dtype)


def choose_postprocess(cfg: PostprocessConfig, checkpoints: Sequence, overridden: Sequence[str] = (),
                       cv_file: Path | None = None) -> tuple[PostProcess, str]:
    """The post-processing a prediction applies, and where it came from, in words.

    ``cfg`` is the first checkpoint's stored section with the command line's
    ``--postprocess.*`` on top (``overridden``: the keys it set). In order:
    ``postprocess.file`` when given; for several checkpoints with no override,
    ``cv_file`` (cross-validation's settings, tuned out of fold for exactly
    those folds) when there is one; otherwise the section itself, which a
    trained checkpoint fills with the settings tuned on its validation fold
    (``source`` says so) and the command line's keys override one by one.
    """
    if cfg.file:
        return PostProcess.from_json(cfg.file), f"--postprocess.file={cfg.file}"
    if len(checkpoints) > 1 and not overridden and cv_file is not None:
        return PostProcess.from_json(cv_file), f"cross-validation's, tuned out of fold: {cv_file}"
    origin = f"{checkpoints[0]}, {cfg.source}" if cfg.source else "the config's defaults"
    if len(checkpoints) > 1:
        origin += f" (the first of {len(checkpoints)} checkpoints; scripts/cv.py tunes for all of them)"
    if overridden:
        origin += f", with {', '.join(f'postprocess.{k}' for k in overridden)} from the command line"
    return PostProcess.from_config(cfg), origin


# ---------------------------------------------------------------- probability files


def save_probs(path, probs, class_probs=None) -> None:
    """Write ``probs`` [4, H, W] (stored float16) and optional ``class_probs``
    [4] (float32) as a compressed npz, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"probs": _numpy(probs, np.float16)}
    if class_probs is not None:
        arrays["class_probs"] = _numpy(class_probs, np.float32)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def probs_path(folder, image_id: str) -> Path:
    """Where ``save_probs`` output of image ``image_id`` lives in ``folder``: ``<stem>.npz``."""
    return Path(folder) / f"{Path(image_id).stem}.npz"


def load_probs(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs float32 [4, H, W], class_probs float32 [4] or None) from ``save_probs``.
    Raises FileNotFoundError or ValueError naming ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"probability file not found: {path}")
    with np.load(path) as data:
        if "probs" not in data:
            raise ValueError(f"{path} has no 'probs' array (it holds {sorted(data.files)}); "
                             "expected a file written by save_probs (predict.py --save-probs)")
        class_probs = data["class_probs"].astype(np.float32) if "class_probs" in data else None
        return data["probs"].astype(np.float32), class_probs


def labelled_probs(files: Mapping[str, Path], annotations: Annotations, show: bool = False) -> Iterator[tuple]:
    """One pass over saved probabilities with their truth, the samples ``tune``
    takes. ``files``: image id -> npz of ``save_probs``. Yields ``(probs float32
    [4, H, W], truth uint8 [4, H, W])``, or ``(probs, truth, class_probs float32
    [4])`` when the npz has class probabilities; the truth is
    ``annotations.masks(image_id)`` at the probabilities' size (an image with
    no masks is defect-free). One file in memory at a time."""
    for image_id, path in progress(files.items(), show, total=len(files), desc="tuning", unit="img"):
        probs, class_probs = load_probs(path)
        truth = annotations.masks(image_id, probs.shape[1:])
        yield (probs, truth) if class_probs is None else (probs, truth, class_probs)


# ---------------------------------------------------------------- tuning


@dataclass
class TuneResult:
    """The chosen settings and the Kaggle score ({"score", "per_class"})
    with the base settings and with the chosen ones."""

    postprocess: PostProcess
    before: dict
    after: dict
    n_images: int


class Tuner:
    """``tune``'s grid search fed one image at a time, so a validation loop
    can tune as it scores: ``add`` each image, ``merge`` the tuners of other
    ranks (each image once over all of them), then ``result``. Holds the
    summed Dice table [4, T, M, A, G] and one base Dice row per image."""

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS,
                 min_component_areas: Sequence[int] = MIN_COMPONENT_AREAS,
                 min_total_areas: Sequence[int] = MIN_TOTAL_AREAS, gates: Sequence[float] = GATES,
                 base: PostProcess | None = None):
        self.base = base or PostProcess()
        self.grid = [np.asarray(thresholds, np.float32), np.asarray(min_component_areas),
                     np.asarray(min_total_areas)]
        self.gates = np.asarray(gates, np.float32)
        self.totals: np.ndarray | None = None
        self.before: list[np.ndarray] = []
        self.use_gates: bool | None = None

    def add(self, probs, truth, class_probs=None) -> None:
        """probs: float [4, H, W] in [0, 1]; truth: bool-like [4, H, W];
        class_probs: float [4] or None (the same for every image)."""
        probs, truth = _numpy(probs, np.float32), _numpy(truth, bool)
        if class_probs is not None:
            class_probs = _numpy(class_probs, np.float32)
        self._check_gates(class_probs is not None)
        table = _image_dice_table(probs, truth, class_probs, self.grid, self.gate_grid)
        self.totals = table if self.totals is None else self.totals + table
        self.before.append(dice_from_counts(pair_counts(self.base(probs, class_probs), truth)[0]))

    def merge(self, other: "Tuner") -> "Tuner":
        """This tuner with ``other``'s images added (another rank's share)."""
        if other.totals is not None:
            self._check_gates(other.use_gates)
            self.totals = other.totals if self.totals is None else self.totals + other.totals
            self.before += other.before
        return self

    def result(self) -> TuneResult:
        if self.totals is None:
            raise ValueError("no samples to tune on")
        return _best(self.totals / len(self.before), self.grid + [self.gate_grid], np.stack(self.before))

    @property
    def gate_grid(self) -> np.ndarray:
        return self.gates if self.use_gates else np.zeros(1, np.float32)

    def _check_gates(self, has_class_probs: bool) -> None:
        self.use_gates = has_class_probs if self.use_gates is None else self.use_gates
        if self.use_gates != has_class_probs:
            raise ValueError("either every sample or none must carry class probabilities")


def tune(samples: Iterable[tuple], thresholds: Sequence[float] = THRESHOLDS,
         min_component_areas: Sequence[int] = MIN_COMPONENT_AREAS,
         min_total_areas: Sequence[int] = MIN_TOTAL_AREAS, gates: Sequence[float] = GATES,
         base: PostProcess | None = None) -> TuneResult:
    """Grid search, per class, of threshold x min_component_area x
    min_total_area (x gate when class probabilities are given).

    samples: one pass over ``(probs float [4, H, W], truth bool-like [4, H, W])``
    or ``(probs, truth, class_probs [4])`` per image (validation or
    out-of-fold); a generator is fine, nothing is kept per image. Gates are
    searched only if every sample has class probabilities. ``base`` (default
    PostProcess()) gives the "before" score. Ties go to the middle of the
    plateau, see :func:`_plateau_argmax`; the chosen score is >= the base
    score when the base settings are on the grid.
    """
    tuner = Tuner(thresholds, min_component_areas, min_total_areas, gates, base)
    for sample in samples:
        tuner.add(*sample)
    return tuner.result()


def _image_dice_table(probs, truth, class_probs, grid, gate_grid) -> np.ndarray:
    """Dice of one image for every class and grid point: float64 [4, T, M, A, G]."""
    tables = []
    for c in range(NUM_CLASSES):
        dice = _class_dice_table(probs[c], truth[c], *grid)
        empty = float(not truth[c].any())  # the Dice of a wiped mask
        passed = np.float32(1.0 if class_probs is None else class_probs[c]) >= gate_grid
        tables.append(np.where(passed, dice[..., None], empty))
    return np.stack(tables)


def _class_dice_table(prob, truth, thresholds, comp_areas, total_areas) -> np.ndarray:
    """Dice of one (image, class) pair for each threshold x min_component_area
    x min_total_area: float64 [T, M, A]. One connected-components pass per
    threshold; the area filters work on per-component counts."""
    n_true = int(truth.sum())
    prob, truth = _crop_to_support(prob, truth, thresholds.min())
    out = np.empty((len(thresholds), len(comp_areas), len(total_areas)))
    for i, t in enumerate(thresholds):
        areas, inters = _component_counts(prob > t, truth)
        keep = areas[None, :] >= comp_areas[:, None]  # [M, K]
        n_pred, inter = keep @ areas, keep @ inters  # [M]
        kept = n_pred[:, None] >= total_areas[None, :]  # [M, A]: survives the total-area wipe
        counts = np.stack([inter[:, None] * kept, n_pred[:, None] * kept, np.full(kept.shape, n_true)], -1)
        out[i] = dice_from_counts(counts)
    return out


def _crop_to_support(prob: np.ndarray, truth: np.ndarray, threshold) -> tuple[np.ndarray, np.ndarray]:
    """``prob`` and ``truth`` cropped to the bounding box of ``prob > threshold``
    (empty when no pixel is above it). Every component at this or a higher
    threshold lies inside the box, so the counts are unchanged and the
    connected-components passes scan only the box."""
    on = prob > threshold
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if rows.size == 0:
        return prob[:0, :0], truth[:0, :0]
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return prob[box], truth[box]


def _component_counts(mask: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 8-connected component of ``mask``: (pixel count, pixels also in
    ``truth``), int64 [K] each. Counted with bincount: cv2's WithStats
    variant costs several times more on a strip."""
    if not mask.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    areas = np.bincount(labels[mask], minlength=n)[1:]
    inters = np.bincount(labels[truth], minlength=n)[1:]
    return areas.astype(np.int64), inters.astype(np.int64)


def _plateau_argmax(scores: np.ndarray) -> tuple[int, ...]:
    """The index of the maximum of ``scores`` (a grid of any rank); among tied
    maxima, the one whose 3x3x... neighbourhood has the highest mean score,
    then the earliest. Beyond the grid's edges counts as the worst score: the
    plateau may end right there.

    Ties are the rule for a rare class: with two positive images in a fold,
    dozens of settings score the same. The earliest of them (lowest
    threshold, smallest areas) sits on the plateau's edge, one grid step from
    letting a false positive through on new images; its interior is the
    setting that the validation images support with a margin on every side.
    """
    best = scores.max()
    tied = np.argwhere(scores >= best - 1e-12)
    if len(tied) == 1:
        return tuple(tied[0])
    smoothed = ndimage.uniform_filter(scores.astype(np.float64), size=3, mode="constant", cval=float(scores.min()))
    return tuple(tied[np.argmax(smoothed[tuple(tied.T)])])


def _best(mean_dice: np.ndarray, grids: list[np.ndarray], before: np.ndarray) -> TuneResult:
    """The argmax per class of ``mean_dice`` [4, T, M, A, G] as a TuneResult."""
    chosen, best = [], []
    for c in range(NUM_CLASSES):
        index = _plateau_argmax(mean_dice[c])
        chosen.append([g[i].item() for g, i in zip(grids, index)])
        best.append(float(mean_dice[c][index]))
    threshold, comp, total, gate = (list(v) for v in zip(*chosen))
    postprocess = PostProcess([round(t, 4) for t in threshold], comp, total, [round(g, 4) for g in gate])
    after = {"score": float(np.mean(best)), "per_class": {str(k): s for k, s in zip(CLASS_IDS, best)}}
    return TuneResult(postprocess, kaggle_score(before), after, len(before))
