"""K-fold cross-validation with tuned post-processing.

    python scripts/cv.py --config configs/demo_cpu.yaml --out runs/cv_demo [--folds 0,1] [--section.key=value ...]

Trains every fold of the saved split (each fold an ordinary, resumable
train.py run in OUT/fold<k>), writes out-of-fold probabilities to OUT/oof/
(on train.device, predict.batch_size tiles per forward; under torchrun,
images sharded over the processes), tunes per-class post-processing on them
(OUT/postprocess.json) and prints the CV score per class with and without
post-processing (also OUT/cv.json). Rerunning continues where a killed run
stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import train
from core.cli import parse_with_overrides
from core.config import ConfigError
from datasets.io import ImageReadError
from workflows.cross_validation import format_report, run_cv


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the experiment's YAML")
    parser.add_argument("--out", required=True, type=Path, help="folder for the folds, oof probabilities and report")
    parser.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    args, overrides = parse_with_overrides(parser, argv)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    try:
        report = run_cv(train.main, args.config, overrides, args.out, folds)
    except (ConfigError, FileNotFoundError, ValueError, ImageReadError) as err:
        raise SystemExit(f"cv.py: {err}") from None
    if report is not None:  # rank 0
        print(format_report(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
