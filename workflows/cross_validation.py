"""K-fold cross-validation: train every fold of the saved split, predict each
fold's held-out images with its own model (out-of-fold probabilities), tune
post-processing on them, and report the CV score with and without it.

Each fold is an ordinary train.py run in ``<base>/fold<k>`` (resumable: a
finished fold is skipped, a killed one continues from its last.pt);
out-of-fold probabilities go to ``<base>/oof/<stem>.npz``, the format
``scripts/tune_postprocess.py`` reads, predicted on ``train.device`` in
batches and sharded over ranks under torchrun, as ``predict.py`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from core.config import Config, ConfigError, load_config
from core.distributed import DistInfo, cleanup, init_distributed
from core.files import atomic_write_text
from datasets.splits import fold_image_ids, load_or_make_folds
from inference.metrics import per_class_table
from inference.onnx_predictor import is_onnx, load_onnx_predictor
from inference.postprocess import PostProcess, TuneResult, choose_postprocess, labelled_probs, probs_path, tune
from inference.predictor import Predictor, load_models, missing_probs, predict_probs_files
from training.data import load_run_data, split_path

TrainFn = Callable[[list[str]], dict]


def fold_dir(base: Path, fold: int) -> Path:
    return Path(base) / f"fold{fold}"


def oof_dir(base: Path) -> Path:
    """Where the out-of-fold probabilities go: ``<stem>.npz`` each."""
    return Path(base) / "oof"


def train_folds(train_fn: TrainFn, argv: Sequence[str], base: Path, folds: Sequence[int]) -> None:
    """Run ``train_fn`` (train.py's main) once per fold, each resumable."""
    for fold in folds:
        train_fn([*argv, f"--data.fold={fold}", f"--output_dir={fold_dir(base, fold)}", "--resume"])


def fold_predictor(base: Path, fold: int, device) -> Predictor:
    """The predictor of fold ``fold``'s best checkpoint on ``device``, with the
    predict settings (tiles, TTA, batch size, amp) stored in it."""
    models, fold_cfg = load_models([fold_dir(base, fold) / "best.pt"], device=device)
    return Predictor(models, fold_cfg.predict, device)


def predict_out_of_fold(cfg: Config, base: Path, folds: Sequence[int], dist_info: DistInfo) -> list[str]:
    """Each fold's best checkpoint predicts that fold's validation images
    (whole strips; its tiling, TTA and batch size) on ``dist_info.device``
    into ``base/oof/<stem>.npz``, several images per call, sharded over ranks
    under torchrun (predict.py's loop: ``predict_probs_files``). Images
    already there are kept. Returns the image ids of every fold, in fold
    order. A collective: every rank calls it, and when it returns every
    rank's files are written."""
    data = load_run_data(cfg)
    split = load_or_make_folds(split_path(cfg), data.annotations, cfg.data.folds, cfg.data.split_seed, verbose=False)
    done = []
    for fold in folds:
        _, val_ids = fold_image_ids(split, fold)
        todo = missing_probs(oof_dir(base), val_ids, dist_info)
        if todo:
            predictor = fold_predictor(base, fold, dist_info.device)
            if dist_info.is_main:
                print(f"fold {fold}, out of fold: {len(todo)} images on {dist_info.world_size} x "
                      f"{dist_info.device}, predict.amp: {predictor.precision.describe()}", flush=True)
            predict_probs_files(predictor, data.annotations.image_dir, todo, oof_dir(base), dist_info)
        done += val_ids
    return done


def tune_out_of_fold(cfg: Config, base: Path, image_ids: Sequence[str]) -> TuneResult:
    """Tune post-processing on the out-of-fold probabilities of ``image_ids``,
    starting from (and reporting "before" as) the config's thresholds."""
    annotations = load_run_data(cfg).annotations
    samples = labelled_probs({i: probs_path(oof_dir(base), i) for i in image_ids}, annotations)
    base_post = PostProcess.from_config(cfg.postprocess)
    return tune(samples, base=PostProcess(base_post.threshold, [0] * 4, [0] * 4, [0.0] * 4))


def run_cv(train_fn: TrainFn, config_path, overrides: Sequence[str], base,
           folds: Sequence[int] | None = None) -> dict | None:
    """Train, predict out of fold on ``train.device`` (sharded over ranks
    under torchrun), tune; write ``base/postprocess.json`` and ``base/cv.json``
    and return the report: on rank 0; the other ranks return None."""
    base = Path(base)
    cfg = load_config(config_path, overrides)
    if cfg.data.max_val_images or cfg.data.max_train_images:
        raise ValueError("cross-validation needs every image: drop data.max_val_images / data.max_train_images")
    folds = list(range(cfg.data.folds)) if folds is None else list(folds)
    argv = (["--config", str(config_path)] if config_path else []) + list(overrides)
    dist_info = init_distributed(cfg.train.device)  # one process group for every fold's training and the oof
    train_folds(train_fn, argv, base, folds)
    image_ids = predict_out_of_fold(cfg, base, folds, dist_info)
    cleanup()  # the other ranks are done; rank 0's tuning may outlast a collective's timeout
    if not dist_info.is_main:
        return None
    result = tune_out_of_fold(cfg, base, image_ids)
    result.postprocess.to_json(base / "postprocess.json")
    report = {"folds": folds, "n_images": result.n_images, "without_postprocess": result.before,
              "with_postprocess": result.after, "postprocess": str(base / "postprocess.json"),
              "checkpoints": [str(fold_dir(base, f) / "best.pt") for f in folds]}
    atomic_write_text(base / "cv.json", json.dumps(report, indent=2) + "\n")
    return report


def cv_postprocess_for(checkpoints: Sequence) -> Path | None:
    """``<base>/postprocess.json`` when ``checkpoints`` are fold checkpoints
    ``<base>/fold<k>/best.pt`` of one cross-validation whose ``cv.json``
    lists every one of those folds; else None."""
    paths = [Path(c) for c in checkpoints]
    bases = {p.parent.parent for p in paths}
    if len(bases) != 1 or any(p.name != "best.pt" or not p.parent.name.startswith("fold") for p in paths):
        return None
    base = bases.pop()
    tuned, report = base / "postprocess.json", base / "cv.json"
    if not (tuned.is_file() and report.is_file()):
        return None
    folds = {f"fold{k}" for k in json.loads(report.read_text()).get("folds", [])}
    return tuned if {p.parent.name for p in paths} <= folds else None


def load_predictor(checkpoints: Sequence, overrides: Sequence[str], device) -> tuple[Predictor, PostProcess, str]:
    """What predict.py and serve.py run: the checkpoints' averaged models
    with the first one's predict settings and ``overrides`` on top, and the
    post-processing ``choose_postprocess`` picks (a cross-validation's tuned
    file for its folds), with where it came from in words. One ``.onnx``
    file (scripts/export.py) gives an ``OnnxPredictor`` with the settings
    and post-processing stored in it."""
    overridden = [o[len("--postprocess."):].split("=", 1)[0] for o in overrides if o.startswith("--postprocess.")]
    if any(is_onnx(c) for c in checkpoints):
        if len(checkpoints) > 1:
            raise ConfigError("one .onnx file at a time: scripts/export.py averages several checkpoints into one")
        predictor, cfg = load_onnx_predictor(checkpoints[0], overrides, device)
        postprocess, origin = choose_postprocess(cfg.postprocess, checkpoints, overridden)
        return predictor, postprocess, origin
    models, cfg = load_models(checkpoints, overrides, device)
    postprocess, origin = choose_postprocess(cfg.postprocess, checkpoints, overridden,
                                             cv_postprocess_for(checkpoints))
    return Predictor(models, cfg.predict, device), postprocess, origin


def format_report(report: dict) -> str:
    lines = [f"out-of-fold Kaggle score on {report['n_images']} images, folds {report['folds']}",
             per_class_table({"without postprocess": report["without_postprocess"],
                              "with tuned postprocess": report["with_postprocess"]}),
             f"tuned settings: {report['postprocess']}",
             "predict with every fold: python predict.py --checkpoint " + " ".join(report["checkpoints"])
             + f" --postprocess.file={report['postprocess']} --images ... --out ..."]
    return "\n".join(lines)
