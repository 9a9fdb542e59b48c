"""Transfer matrix: each style's model (from a robustness study) on every style's test strips.

    python scripts/transfer_matrix.py --study runs/robustness --out runs/transfer [--styles a,b,c]

A robustness study (scripts/robustness.py) trains the README path on each
style and tests it on the same style: the diagonal. This script fills in the
rest: the model trained on style T, with T's tuned post-processing, predicts
the held-out test strips of style S (the study's S/data/test_images). Every
cell is the held-out score minus S's all-empty score, so 0 means "no better
than predicting nothing" on that line's data. It writes OUT/matrix.json,
OUT/matrix.md and OUT/matrix.png (a heatmap; rows: trained on, columns:
tested on). Resumable: a finished cell (OUT/cells/T__on__S.json) is not
predicted again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import predict
from core.files import atomic_path, atomic_write_text
from datasets.severstal import list_images
from inference.scoring import score_csv

RESULT = "result.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, type=Path, help="a scripts/robustness.py --out folder")
    parser.add_argument("--out", required=True, type=Path, help="where the cells, the table and the picture go")
    parser.add_argument("--styles", default="", help="comma-separated styles (default: every finished style of "
                        "the study, in its report's order)")
    return parser.parse_args(argv)


def finished_styles(study: Path) -> list[str]:
    """The study's styles with a result, in its report's order (then by name)."""
    report = study / "report.json"
    order = [r["style"] for r in json.loads(report.read_text())["styles"]] if report.is_file() else []
    found = sorted(p.parent.name for p in study.glob(f"*/{RESULT}"))
    return [s for s in order if s in found] + [s for s in found if s not in order]


def cell(study: Path, out: Path, trained: str, tested: str) -> dict:
    """The score of ``trained``'s model on ``tested``'s test strips, overall and per class."""
    path = out / "cells" / f"{trained}__on__{tested}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if trained == tested:  # the study's own README-path prediction
        result = json.loads((study / trained / RESULT).read_text())
        scores = {"score": result["tuned"]["score"], "per_class": result["tuned"]["per_class"],
                  "empty": result["empty"]["score"]}
    else:
        cv, data = study / trained / "cv", study / tested / "data"
        pred = out / "predictions" / f"{trained}__on__{tested}"
        predict.main(["--checkpoint", str(cv / "fold0" / "best.pt"), "--images", str(data / "test_images"),
                      "--out", str(pred), f"--postprocess.file={cv / 'postprocess.json'}", "--resume"])
        scored = score_csv(pred / "submission.csv", data / "test_truth.csv", list_images(data / "test_images"))
        scores = {"score": scored["score"], "per_class": dict(scored["per_class"]),
                  "empty": scored["empty_baseline"]}
    atomic_write_text(path, json.dumps(scores, indent=2) + "\n")
    return scores


def markdown(styles: list[str], gains: np.ndarray, scores: np.ndarray) -> str:
    lines = ["Held-out score minus the all-empty score (in brackets: the score); rows: trained on, "
             "columns: tested on.", "",
             "| trained on \\ tested on | " + " | ".join(styles) + " | worst |",
             "|---|" + "---:|" * (len(styles) + 1)]
    for i, trained in enumerate(styles):
        row = [f"{gains[i, j]:+.3f} ({scores[i, j]:.3f})" for j in range(len(styles))]
        lines.append(f"| {trained} | " + " | ".join(row) + f" | {gains[i].min():+.3f} |")
    return "\n".join(lines)


def heatmap(styles: list[str], gains: np.ndarray, path: Path) -> None:
    """The gains as a PNG at ``path``: diverging colours around 0 (the all-empty submission)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = max(0.05, float(np.abs(gains).max()))
    fig, ax = plt.subplots(figsize=(1.3 * len(styles) + 2.5, 1.1 * len(styles) + 1.5))
    image = ax.imshow(gains, cmap="RdYlGn", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(styles)), styles, rotation=30, ha="right")
    ax.set_yticks(range(len(styles)), styles)
    ax.set_xlabel("tested on (held-out strips)")
    ax.set_ylabel("trained on (README path, tuned post-processing)")
    for i in range(len(styles)):
        for j in range(len(styles)):
            ax.text(j, i, f"{gains[i, j]:+.3f}", ha="center", va="center", fontsize=9,
                    fontweight="bold" if i == j else "normal")
    fig.colorbar(image, ax=ax, label="score minus all-empty score")
    ax.set_title("Transfer between synthetic styles")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    styles = [s.strip() for s in args.styles.split(",") if s.strip()] or finished_styles(args.study)
    if missing := [s for s in styles if not (args.study / s / RESULT).is_file()]:
        raise SystemExit(f"transfer_matrix.py: no finished style {missing} in {args.study} "
                         f"(no {RESULT}): run scripts/robustness.py --out {args.study} --styles ... first")
    if len(styles) < 2:
        raise SystemExit(f"transfer_matrix.py: need two or more finished styles in {args.study}, found {styles}")
    cells = {(t, s): cell(args.study, args.out, t, s) for t in styles for s in styles}
    scores = np.array([[cells[t, s]["score"] for s in styles] for t in styles])
    gains = scores - np.array([[cells[t, s]["empty"] for s in styles] for t in styles])
    table = markdown(styles, gains, scores)
    atomic_write_text(args.out / "matrix.json", json.dumps(
        {"styles": styles, "score": scores.tolist(), "gain_over_empty": gains.tolist(),
         "cells": {f"{t}__on__{s}": v for (t, s), v in cells.items()}}, indent=2) + "\n")
    atomic_write_text(args.out / "matrix.md", table + "\n")
    heatmap(styles, gains, args.out / "matrix.png")
    print(table)
    print(f"picture: {args.out / 'matrix.png'}")
    return {"styles": styles, "gains": gains}


if __name__ == "__main__":
    main(sys.argv[1:])
