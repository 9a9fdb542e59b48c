"""Robustness study: the README recipe trained and tested on each synthetic style.

    python scripts/robustness.py --out runs/robustness [--styles classic,faint_soft] \\
        [--train 800 --test 100 --seed 0] [--config configs/demo_cpu.yaml] [--section.key=value ...]

For each style (default: every named style of datasets/styles.py) it makes
the dataset (OUT/<style>/data, as scripts/make_synthetic.py --style), runs the
README path (scripts/cv.py --folds 0 into OUT/<style>/cv, then predict.py on the
held-out test strips with --postprocess.file=<cv>/postprocess.json into
OUT/<style>/tuned) and the direct path (predict.py with the checkpoint's own
settings and no post-processing flag into OUT/<style>/direct), and scores both
against test_truth.csv. It prints, per style, the all-empty score, the tuned
score and its gain over empty, overall and per class, and the direct score;
OUT/<style>/result.json holds them, OUT/report.json and OUT/report.md all styles.

``--section.key=value`` overrides apply to the training config (``--predict.*``
ones to both predictions too); data.root and output_dir are the study's.
Resumable: a style with a result.json is skipped, and a killed style continues
where it stopped (each step resumes). A style folder made with other settings
is refused, not mixed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import predict
import train
from core import files
from core.cli import CONFIGS, parse_with_overrides
from core.files import atomic_write_text
from datasets.severstal import list_images
from datasets.styles import STYLE_CHOICES, STYLES
from datasets.synthetic import format_summary, make_dataset
from inference.metrics import per_class_table
from inference.scoring import score_csv
from workflows.cross_validation import fold_dir, format_report, run_cv

RESULT, SETTINGS = "result.json", "settings.json"
STUDY_KEYS = ("--data.root=", "--output_dir=")  # set by the study, per style


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="study folder: one subfolder per style, the report")
    parser.add_argument("--styles", default=",".join(STYLES),
                        help=f"comma-separated styles (default: every named one); from {', '.join(STYLE_CHOICES)}")
    parser.add_argument("--train", type=int, default=800, help="training strips per style (default 800)")
    parser.add_argument("--test", type=int, default=100, help="held-out test strips per style (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every style's data (default 0)")
    parser.add_argument("--config", type=Path, default=CONFIGS / "demo_cpu.yaml", help="training config (default: "
                        "the demo's)")
    args, overrides = parse_with_overrides(parser, argv)
    args.styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if unknown := [s for s in args.styles if s not in STYLE_CHOICES]:
        parser.error(f"unknown styles {unknown}; choose from {', '.join(STYLE_CHOICES)}")
    if fixed := [o for o in overrides if o.startswith(STUDY_KEYS)]:
        parser.error(f"{fixed}: the study sets data.root and output_dir for each style")
    return args, overrides


def study_settings(args: argparse.Namespace, overrides: list[str]) -> dict:
    """What a style's results depend on besides its name: plain JSON data."""
    return {"train": args.train, "test": args.test, "seed": args.seed, "config": str(args.config),
            "overrides": list(overrides)}


def claim_folder(folder: Path, settings: dict) -> None:
    """A style folder holds one study's files, never a mix of two (core.files.claim_folder)."""
    files.claim_folder(folder, settings, "robustness.py", SETTINGS)


def held_out_score(pred_dir: Path, data: Path) -> dict:
    """inference.scoring.score_csv of ``pred_dir``'s submission on the test strips."""
    return score_csv(pred_dir / "submission.csv", data / "test_truth.csv", list_images(data / "test_images"))


def predict_test(checkpoint: Path, data: Path, out: Path, *flags: str) -> dict:
    """predict.py on the style's test strips into ``out`` (resumable); the score."""
    predict.main(["--checkpoint", str(checkpoint), "--images", str(data / "test_images"), "--out", str(out),
                  "--resume", *flags])
    return held_out_score(out, data)


def run_style(style: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    """Data, CV fold 0, both predictions and their scores for one style: its result."""
    folder = args.out / style
    settings = study_settings(args, overrides)
    claim_folder(folder, settings)
    data, cv = folder / "data", folder / "cv"
    made = make_dataset(data, args.train, args.test, args.seed, style=style, progress=False)
    print(format_summary(made), flush=True)
    report = run_cv(train.main, args.config, [*overrides, f"--data.root={data}"], cv, folds=[0])
    print(format_report(report), flush=True)
    checkpoint = fold_dir(cv, 0) / "best.pt"
    predict_flags = [o for o in overrides if o.startswith("--predict.")]
    tuned = predict_test(checkpoint, data, folder / "tuned", f"--postprocess.file={cv / 'postprocess.json'}",
                         *predict_flags)
    direct = predict_test(checkpoint, data, folder / "direct", *predict_flags)
    return {"style": style, "style_params": made["params"]["style_params"], "settings": settings,
            "empty": {"score": tuned["empty_baseline"], "per_class": tuned["empty_baseline_per_class"]},
            "tuned": pick_scores(tuned), "direct": pick_scores(direct), "n_test_images": tuned["n_images"],
            "cv_fold0": {"without_postprocess": pick_scores(report["without_postprocess"]),
                         "with_postprocess": pick_scores(report["with_postprocess"])}}


def pick_scores(result: dict) -> dict:
    return {"score": result["score"], "per_class": dict(result["per_class"])}


def gain(scores: dict, baseline: dict) -> dict:
    """``scores`` minus ``baseline``, overall and per class."""
    return {"score": scores["score"] - baseline["score"],
            "per_class": {k: v - baseline["per_class"][k] for k, v in scores["per_class"].items()}}


def style_table(result: dict) -> str:
    """One style's held-out table: all empty, tuned, tuned's gain over
    empty, direct and direct's gain; overall and per class."""
    empty = result["empty"]
    return per_class_table({
        "all empty": empty,
        "tuned (README path)": result["tuned"],
        "tuned: gain over empty": gain(result["tuned"], empty),
        "direct (no postprocess flag)": result["direct"],
        "direct: gain over empty": gain(result["direct"], empty),
    })


def summary_markdown(results: list[dict]) -> str:
    """A markdown table, one row per style: empty, tuned, gain, direct, gain,
    and the classes where the tuned path is below its empty baseline."""
    lines = ["| style | all empty | tuned | gain | direct | gain | tuned below empty in |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        tuned_gain, direct_gain = gain(r["tuned"], r["empty"]), gain(r["direct"], r["empty"])
        below = [f"class {k}" for k, v in tuned_gain["per_class"].items() if v < 0]
        lines.append(f"| {r['style']} | {r['empty']['score']:.4f} | {r['tuned']['score']:.4f} | "
                     f"{tuned_gain['score']:+.4f} | {r['direct']['score']:.4f} | {direct_gain['score']:+.4f} | "
                     f"{', '.join(below) or '-'} |")
    return "\n".join(lines)


def report_markdown(results: list[dict], command: str) -> str:
    parts = ["# Robustness of the recipe across synthetic styles", "", f"Command: `{command}`", "",
             summary_markdown(results)]
    for r in results:
        parts += ["", f"## {r['style']} ({r['n_test_images']} test strips)", "", "```", style_table(r), "```"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = parse_args(argv)
    results = []
    for style in args.styles:
        path = args.out / style / RESULT
        if path.is_file():
            claim_folder(args.out / style, study_settings(args, overrides))
            result = json.loads(path.read_text())
            print(f"== {style}: done before, {path}", flush=True)
        else:
            print(f"== {style}", flush=True)
            result = run_style(style, args, overrides)
            atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        print(f"-- {style}: held-out score on {result['n_test_images']} test strips\n{style_table(result)}",
              flush=True)
        results.append(result)
    command = "python scripts/robustness.py " + " ".join(argv)
    atomic_write_text(args.out / "report.json", json.dumps({"command": command, "styles": results}, indent=2) + "\n")
    atomic_write_text(args.out / "report.md", report_markdown(results, command))
    print(summary_markdown(results))
    return results


if __name__ == "__main__":
    main()
