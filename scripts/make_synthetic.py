"""Write the synthetic Severstal-like dataset (the project's embedded default).

    python scripts/make_synthetic.py --out data/synthetic --train 800 --test 100 --seed 0 [--style NAME]

Writes, in the Kaggle layout: train.csv (ImageId,ClassId,EncodedPixels),
train_images/, test_images/, sample_submission.csv, plus test_truth.csv (the
test masks) and synthetic.json (arguments, style and summary). The same
arguments give byte-identical files; a folder already holding them is left
alone unless --force.

--style picks the look of the steel and the defects (datasets/styles.py):
classic (the default, the original look), a named style, or random (a style
drawn from --seed). Styles with real mask shapes read
../shared/real/train_masks_5028.csv next to the repository, or
$SEVERSTAL_REAL_DIR/train_masks_5028.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets.styles import DEFAULT_STYLE, DESCRIPTIONS, RANDOM_STYLE, STYLE_CHOICES
from datasets.synthetic import default_workers, format_summary, make_dataset


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def style_help() -> str:
    lines = [f"  {name:<13} {text}" for name, text in DESCRIPTIONS.items()]
    return "styles:\n" + "\n".join(lines) + f"\n  {RANDOM_STYLE:<13} a style drawn from --seed"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=style_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--train", type=non_negative, default=800, help="training images (default 800)")
    parser.add_argument("--test", type=non_negative, default=100, help="test images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--style", choices=STYLE_CHOICES, default=DEFAULT_STYLE,
                        help=f"the look of steel and defects (default {DEFAULT_STYLE}; listed below)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"processes drawing images (default {default_workers()}); the files do not depend on it")
    parser.add_argument("--force", action="store_true", help="regenerate even if --out already holds this dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        summary = make_dataset(args.out, args.train, args.test, args.seed, workers=args.workers,
                               force=args.force, progress=not args.no_progress, style=args.style)
    except FileNotFoundError as err:  # a style's real mask shapes
        raise SystemExit(f"make_synthetic.py: {err}") from None
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
