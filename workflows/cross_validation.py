"""K-fold cross-validation: train every fold of the saved split, predict each
fold's held-out images with its own model (out-of-fold probabilities), tune
post-processing on them, and report the CV score with and without it.

Each fold is an ordinary train.py run in ``<base>/fold<k>`` (resumable: a
finished fold is skipped, a killed one continues from its last.pt);
out-of-fold probabilities go to ``<base>/oof/<stem>.npz``, the format
``scripts/tune_postprocess.py`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from core.config import Config, load_config
from core.files import atomic_write_text
from core.progress import progress
from datasets.splits import fold_image_ids, load_or_make_folds
from inference.postprocess import PostProcess, TuneResult, load_probs, save_probs, tune
from inference.predictor import ImageFolder, Predictor, load_models
from training.data import load_run_data, split_path

TrainFn = Callable[[list[str]], dict]


def fold_dir(base: Path, fold: int) -> Path:
    return Path(base) / f"fold{fold}"


def train_folds(train_fn: TrainFn, argv: Sequence[str], base: Path, folds: Sequence[int]) -> None:
    """Run ``train_fn`` (train.py's main) once per fold, each resumable."""
    for fold in folds:
        train_fn([*argv, f"--data.fold={fold}", f"--output_dir={fold_dir(base, fold)}", "--resume"])


@torch.inference_mode()
def predict_out_of_fold(cfg: Config, base: Path, folds: Sequence[int], device="cpu") -> list[str]:
    """Each fold's best checkpoint predicts that fold's validation images
    (whole strips, the config's tiling and TTA) into ``base/oof``; images
    already there are kept. Returns the image ids predicted, in fold order."""
    data = load_run_data(cfg)
    split = load_or_make_folds(split_path(cfg), data.annotations, cfg.data.folds, cfg.data.split_seed, verbose=False)
    oof_dir, done = Path(base) / "oof", []
    for fold in folds:
        _, val_ids = fold_image_ids(split, fold)
        todo = [i for i in val_ids if not (oof_dir / f"{Path(i).stem}.npz").exists()]
        if todo:
            models, fold_cfg = load_models([fold_dir(base, fold) / "best.pt"], device=device)
            predictor = Predictor(models, fold_cfg.predict, device)
            print(f"fold {fold}, out of fold: predict.amp: {predictor.precision.describe()}", flush=True)
            for name, image in progress(ImageFolder(data.annotations.image_dir, todo), True, desc=f"oof fold {fold}"):
                if isinstance(image, Exception):
                    raise image
                probs, class_probs = predictor.predict_probs(image[None])
                save_probs(oof_dir / f"{Path(name).stem}.npz", probs[0], None if class_probs is None else class_probs[0])
        done += val_ids
    return done


def tune_out_of_fold(cfg: Config, base: Path, image_ids: Sequence[str]) -> TuneResult:
    """Tune post-processing on the out-of-fold probabilities of ``image_ids``,
    starting from (and reporting "before" as) the config's settings."""
    annotations = load_run_data(cfg).annotations

    def samples():
        for image_id in image_ids:
            probs, class_probs = load_probs(Path(base) / "oof" / f"{Path(image_id).stem}.npz")
            truth = annotations.masks(image_id)
            yield (probs, truth) if class_probs is None else (probs, truth, class_probs)

    base_post = PostProcess.from_config(cfg.postprocess)
    return tune(samples(), base=PostProcess(base_post.threshold, [0] * 4, [0] * 4, [0.0] * 4))


def run_cv(train_fn: TrainFn, config_path, overrides: Sequence[str], base, folds: Sequence[int] | None = None) -> dict:
    """Train, predict out of fold, tune; write ``base/postprocess.json`` and
    ``base/cv.json`` and return the report."""
    base = Path(base)
    cfg = load_config(config_path, overrides)
    if cfg.data.max_val_images or cfg.data.max_train_images:
        raise ValueError("cross-validation needs every image: drop data.max_val_images / data.max_train_images")
    folds = list(range(cfg.data.folds)) if folds is None else list(folds)
    argv = (["--config", str(config_path)] if config_path else []) + list(overrides)
    train_folds(train_fn, argv, base, folds)
    image_ids = predict_out_of_fold(cfg, base, folds)
    result = tune_out_of_fold(cfg, base, image_ids)
    result.postprocess.to_json(base / "postprocess.json")
    report = {"folds": folds, "n_images": result.n_images, "without_postprocess": result.before,
              "with_postprocess": result.after, "postprocess": str(base / "postprocess.json"),
              "checkpoints": [str(fold_dir(base, f) / "best.pt") for f in folds]}
    atomic_write_text(base / "cv.json", json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    before, after = report["without_postprocess"], report["with_postprocess"]
    lines = [f"out-of-fold Kaggle score on {report['n_images']} images, folds {report['folds']}",
             f"{'':<22}{'score':>8}" + "".join(f"{'class ' + c:>10}" for c in before["per_class"])]
    for name, r in (("without postprocess", before), ("with tuned postprocess", after)):
        lines.append(f"{name:<22}{r['score']:>8.4f}" + "".join(f"{v:>10.4f}" for v in r["per_class"].values()))
    lines.append(f"tuned settings: {report['postprocess']}")
    lines.append("predict with every fold: python predict.py --checkpoint " + " ".join(report["checkpoints"])
                 + f" --postprocess.file={report['postprocess']} --images ... --out ...")
    return "\n".join(lines)
