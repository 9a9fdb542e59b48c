"""Fit the classical pipeline's parameters (``models/classical.py``) with Optuna.

The objective is the Kaggle metric on whole training strips: the score is
the mean over classes of each class's mean Dice, and each class's map
depends on that class's parameters only, so every class is searched on its
own (``model.classical.trials`` trials each, TPE, the defaults tried first).
A class's mean Dice over the training fold is estimated on a stratified
sample: up to ``fit_images / 2`` strips that hold the class and as many that
do not, weighted by their shares of the fold, which is the same expectation
with rare classes (class 2: 2% of strips) seen often enough. Each trial also
picks the class's minimum component and total areas of post-processing at
threshold 0.5, the score at which a response crosses its fitted threshold.

The validation fold is scored once, after the search, for the record: it
never steers it. The run is written as a trained one is: ``best.pt`` and
``last.pt`` (the parameters as the model's state dict, the resolved config
with the fitted post-processing), ``postprocess.json`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import optuna
import torch

from core.checkpoint import save_checkpoint
from core.classes import CLASS_IDS, NUM_CLASSES
from core.config import Config, to_dict
from core.files import atomic_write_text
from core.precision import Precision
from core.progress import progress
from inference.metrics import dice_from_counts, empty_baseline, kaggle_score, pair_counts
from inference.postprocess import PostProcess, remove_small_components
from models.classical import PARAM_SPACE, ClassicalPipeline, class_params, class_score, prepare
from training.data import RunData

MAX_COMPONENT_AREA = 600  # the search range of post-processing's minimum areas, per class
MAX_TOTAL_AREA = 4000


def read_strip(path: Path) -> np.ndarray:
    """float32 [H, W] grey levels 0..255 of an image file (the mean of its channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return image.astype(np.float32).mean(2)


def stratified_sample(ids: list[str], has_class: list[bool], n: int, seed: int) -> tuple[list[str], list[float]]:
    """Up to n/2 of ``ids`` with the class and n/2 without (all when n is 0),
    and per image the weight that makes a weighted mean over the sample
    estimate the plain mean over ``ids``."""
    rng = np.random.default_rng(seed)
    chosen, weights = [], []
    for present in (True, False):
        group = [i for i, h in zip(ids, has_class) if h == present]
        if not group:
            continue
        take = group if not n else list(rng.choice(group, min(len(group), n // 2), replace=False))
        chosen += take
        weights += [len(group) / len(ids) / len(take)] * len(take)
    return chosen, weights


def masked_dice(score: np.ndarray, truth: np.ndarray, min_component: int, min_total: int) -> float:
    """Dice of one class's post-processed mask (score > 0.5) against ``truth``."""
    mask = remove_small_components((score > 0.5).astype(np.uint8), min_component)
    if mask.sum() < min_total:
        mask[:] = 0
    return float(dice_from_counts(pair_counts(mask[None], truth[None]))[0, 0])


class ClassSearch:
    """The Optuna objective of one class on its stratified sample of strips."""

    def __init__(self, class_id: int, strips: list[tuple[np.ndarray, np.ndarray]], truths: list[np.ndarray],
                 weights: list[float], base: dict):
        self.class_id, self.strips, self.truths, self.weights, self.base = class_id, strips, truths, weights, base

    def __call__(self, trial: optuna.Trial) -> float:
        params = dict(self.base)
        for name in class_params(self.class_id):
            p = PARAM_SPACE[name]
            suggest = trial.suggest_int if p.integer else trial.suggest_float
            params[name] = suggest(name, p.low, p.high)
        min_component = trial.suggest_int("min_component_area", 0, MAX_COMPONENT_AREA)
        min_total = trial.suggest_int("min_total_area", 0, MAX_TOTAL_AREA)
        dice = [masked_dice(class_score(grey, on, params, self.class_id), truth, min_component, min_total)
                for (grey, on), truth in zip(self.strips, self.truths)]
        return float(np.dot(dice, self.weights))


def search_class(class_id: int, data: RunData, cfg: Config, base: dict, show: bool) -> optuna.Study:
    """The study of one class: its parameters and minimum areas, best first tried at the defaults."""
    annotations, ids = data.annotations, data.train_ids
    has_class = [class_id in annotations.classes_present(i) for i in ids]
    sample, weights = stratified_sample(ids, has_class, cfg.model.classical.fit_images, cfg.train.seed + class_id)
    strips = [prepare(read_strip(annotations.path(i))) for i in sample]
    truths = [annotations.masks(i)[class_id - 1] for i in sample]
    sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + class_id)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({**{n: PARAM_SPACE[n].default for n in class_params(class_id)},
                         "min_component_area": 0, "min_total_area": 0})
    objective = ClassSearch(class_id, strips, truths, weights, base)
    bar = progress(range(cfg.model.classical.trials), show, desc=f"class {class_id}", unit="trial")
    for _ in bar:
        study.optimize(objective, n_trials=1)
        bar.set_postfix(best=f"{study.best_value:.4f}")
    return study


def score_strips(model: ClassicalPipeline, postprocess: PostProcess, annotations, ids: list[str],
                 show: bool) -> dict:
    """Kaggle score (and the all-empty baseline) of the model on whole strips ``ids``."""
    counts = []
    for image_id in progress(ids, show, desc="val", unit="img"):
        image = torch.from_numpy(read_strip(annotations.path(image_id)) / 255.0).float()
        with torch.inference_mode():
            scores = model(image.expand(1, 3, -1, -1))[0]
        counts.append(pair_counts(postprocess(scores), annotations.masks(image_id))[0])
    table = np.stack(counts)
    result = kaggle_score(dice_from_counts(table))
    result["empty_baseline"] = empty_baseline(table[..., 2] > 0)["score"]
    result["n_images"] = len(ids)
    return result


def fit_classical(cfg: Config, data: RunData, model: ClassicalPipeline, precision: Precision,
                  verbose: bool = True) -> dict:
    """Search every class's parameters on the training fold, score the
    validation fold once, and write the run into ``cfg.output_dir``. Returns
    the record also appended to metrics.jsonl."""
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model.eval()
    base = model.params()
    postprocess = PostProcess(threshold=[0.5] * NUM_CLASSES)
    fitted = {}
    for class_id in CLASS_IDS:
        study = search_class(class_id, data, cfg, base, verbose)
        best = dict(study.best_params)
        postprocess.min_component_area[class_id - 1] = best.pop("min_component_area")
        postprocess.min_total_area[class_id - 1] = best.pop("min_total_area")
        model.set_params(best)
        fitted[str(class_id)] = study.best_value
        if verbose:
            print(f"class {class_id}: training-fold Dice {study.best_value:.4f} after {len(study.trials)} trials "
                  f"({', '.join(f'{k}={v:.4g}' for k, v in best.items())})", flush=True)
    val = score_strips(model, postprocess, data.annotations, data.val_ids, verbose)
    record = {"epoch": 1, "step": cfg.model.classical.trials * NUM_CLASSES, "train": {"dice": fitted},
              "val": val, "best_score": val["score"], "time_s": round(time.perf_counter() - started, 2)}
    save_run(cfg, model, postprocess, precision, record)
    if verbose:
        per_class = " ".join(f"{k}:{v:.3f}" for k, v in val["per_class"].items())
        print(f"fitted in {record['time_s']:.0f} s: validation fold {val['score']:.4f} "
              f"(empty {val['empty_baseline']:.4f}; {per_class})", flush=True)
    return record


def save_run(cfg: Config, model: ClassicalPipeline, postprocess: PostProcess, precision: Precision,
             record: dict) -> None:
    out = Path(cfg.output_dir)
    config = to_dict(cfg)
    source = (f"fitted with the classical parameters on the training fold ({cfg.model.classical.trials} "
              "Optuna trials per class)")
    config["postprocess"].update(asdict(postprocess), file="", source=source)
    state = {"model": model.state_dict(), "ema": None, "epoch": record["epoch"], "step": record["step"],
             "best_score": record["best_score"], "config": config, "precision": precision.to_dict(),
             "tuned": None, "wandb_id": None, "search": {"train_dice": record["train"]["dice"]}}
    save_checkpoint(state, out / "best.pt")
    save_checkpoint(state, out / "last.pt")
    postprocess.to_json(out / "postprocess.json")
    atomic_write_text(out / "metrics.jsonl", json.dumps(record) + "\n")
