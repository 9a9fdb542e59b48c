"""One table for every model: masks (Kaggle score) and pass/fail (image AUROC).

    python scripts/leaderboard.py --data.root=data/synthetic --runs runs/demo runs/classical runs/autoencoder \
        [--out outputs/leaderboard] [--device auto]

Each run (a train.py output_dir with best.pt, or a cross-validation folder
with fold*/best.pt and the postprocess.json it tuned) predicts the held-out
strips ``<data.root>/test_images`` as predict.py would, into ``OUT/<run>``,
and is scored against ``<data.root>/test_truth.csv``: the Kaggle score and
per class, the any-defect ROC AUC of the image-level scores, the recall at a
1% false-fail rate, the seconds per strip of the prediction (images read,
predicted, post-processed and written) and, for an anomaly model, the
pixel-level ROC AUC of its maps. The all-empty submission is the floor.
Prints one Markdown table (also ``OUT/leaderboard.md``, the numbers in
``OUT/leaderboard.json``) and draws the any-defect ROC curves into
``OUT/roc.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.distributed import init_distributed
from core.files import atomic_write_text
from core.precision import machine_summary
from datasets.rle import STRIP_SHAPE
from datasets.severstal import list_images, read_mask_table, table_to_rles
from inference.image_scores import ANOMALY_DIR, ANOMALY_SCORES, IMAGE_SCORES, read_scores_csv
from inference.passfail import anomaly_pairs, passfail_report, pixel_metrics, presence
from inference.predictor import predict_folder
from inference.scoring import score_csv
from workflows.cross_validation import load_predictor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data.root", dest="root", required=True, type=Path,
                        help="a folder with test_images/ and test_truth.csv (make_synthetic.py's layout)")
    parser.add_argument("--runs", required=True, nargs="+", type=Path, help="run folders to compare")
    parser.add_argument("--out", type=Path, default=Path("outputs/leaderboard"), help="output folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


def run_checkpoints(run: Path) -> tuple[list[Path], list[str]]:
    """The checkpoints of a run and the overrides predict.py is given for it
    (a cross-validation folder's tuned postprocess.json)."""
    if (run / "best.pt").is_file():
        return [run / "best.pt"], []
    folds = sorted(run.glob("fold*/best.pt"))
    if not folds:
        raise SystemExit(f"leaderboard.py: {run} has no best.pt nor fold*/best.pt")
    tuned = run / "postprocess.json"
    return folds, [f"--postprocess.file={tuned}"] if tuned.is_file() else []


def evaluate_run(run: Path, images: Path, truth_csv: Path, out: Path, dist_info) -> dict:
    """Predict ``images`` with ``run`` into ``out`` and score it."""
    checkpoints, overrides = run_checkpoints(run)
    predictor, postprocess, origin = load_predictor(checkpoints, overrides, dist_info.device)
    print(f"== {run}: {', '.join(map(str, checkpoints))}; post-processing: {origin}", flush=True)
    started = time.perf_counter()
    summary = predict_folder(predictor, postprocess, images, out, dist_info)
    seconds = time.perf_counter() - started
    image_ids = list_images(images)
    result = score_csv(summary.submission, truth_csv, image_ids, STRIP_SHAPE)
    truth = table_to_rles(read_mask_table(truth_csv))
    pred = table_to_rles(read_mask_table(summary.submission))
    scores = read_scores_csv(out / (ANOMALY_SCORES if predictor.anomaly else IMAGE_SCORES), image_ids)
    row = {"run": str(run), "kind": _kind(checkpoints[0]), "score": result["score"],
           "per_class": result["per_class"], "empty_baseline": result["empty_baseline"],
           "empty_baseline_per_class": result["empty_baseline_per_class"],
           "s_per_strip": seconds / len(image_ids), "n_images": len(image_ids),
           "passfail": passfail_report(presence(truth, image_ids), presence(pred, image_ids),
                                       scores["score"].to_numpy()),
           "roc_scores": scores["score"].tolist(), "defective": presence(truth, image_ids).any(1).tolist()}
    if predictor.anomaly:
        row["pixel"] = pixel_metrics(anomaly_pairs(out / ANOMALY_DIR, truth, image_ids, STRIP_SHAPE))
    return row


def _kind(checkpoint: Path) -> str:
    """The model a checkpoint holds, in a few words."""
    model = load_config(base=load_checkpoint(checkpoint)["config"]).model
    if model.name == "smp":
        return f"smp {model.smp.arch} {model.smp.encoder}"
    return model.name


def empty_row(rows: list[dict]) -> dict:
    """The all-empty submission: its Kaggle score; every strip passes (constant scores)."""
    first = rows[0]
    defective = np.array(first["defective"])
    n = len(defective)
    passfail = passfail_report(np.c_[defective, np.zeros((n, 3), bool)], np.zeros((n, 4), bool), np.zeros(n))
    return {"run": "all-empty submission", "kind": "-", "score": first["empty_baseline"],
            "per_class": first["empty_baseline_per_class"], "s_per_strip": None, "passfail": passfail}


def _cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | run | Kaggle | class 1 | class 2 | class 3 | class 4 | any-defect AUROC | "
             "recall @ 1% false fails | pixel AUROC | s/strip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        any_defect = row["passfail"]["any"]
        pixel = row.get("pixel", {}).get("pixel_auroc")
        cells = [row["kind"], row["run"], f"**{row['score']:.4f}**",
                 *(f"{row['per_class'][str(c)]:.4f}" for c in range(1, 5)),
                 _cell(any_defect.get("auroc")), _cell(any_defect.get("recall_at_ffr")), _cell(pixel),
                 _cell(row["s_per_strip"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def roc_plot(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for row in rows:
        fpr, tpr, _ = roc_curve(row["defective"], row["roc_scores"])
        auroc = row["passfail"]["any"]["auroc"]
        ax.plot(fpr, tpr, label=f"{row['kind']} ({Path(row['run']).name}): AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance / all-empty")
    ax.axvline(0.01, color="grey", lw=0.6)
    ax.set(xlabel="false-fail rate (good strips failed)", ylabel="recall (defective strips failed)",
           title="any defect, held-out strips")
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    images, truth = args.root / "test_images", args.root / "test_truth.csv"
    for path in (images, truth):
        if not path.exists():
            raise SystemExit(f"leaderboard.py: {path} not found (make_synthetic.py writes it)")
    dist_info = init_distributed(args.device, key="--device")
    rows = [evaluate_run(run, images, truth, args.out / run.name, dist_info) for run in args.runs]
    table = markdown_table([*rows, empty_row(rows)])
    roc_plot(rows, args.out / "roc.png")
    atomic_write_text(args.out / "leaderboard.md", table + "\n")
    atomic_write_text(args.out / "leaderboard.json", json.dumps(rows, indent=1) + "\n")
    print(f"\n{rows[0]['n_images']} held-out strips of {args.root}; s/strip on {machine_summary()}")
    print(table)
    print(f"ROC curves: {args.out / 'roc.png'}")
    return rows


if __name__ == "__main__":
    main()
