"""Score a Severstal submission csv against a truth csv with the Kaggle metric.

    python scripts/evaluate.py --pred SUB.csv --truth TRUTH.csv [--images DIR] [--json]

Prints the score (mean Dice over every image and class, 1 where both masks are
empty), the per-class Dice and the all-empty baseline on the same images.
Either csv may use either layout. Images scored: those in --images, else every
image named in either file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets.rle import STRIP_SHAPE
from datasets.severstal import list_images
from inference.metrics import per_class_table
from inference.scoring import score_csv


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="submission csv (either layout)")
    parser.add_argument("--truth", required=True, type=Path, help="ground-truth csv (either layout)")
    parser.add_argument("--images", type=Path, help="score exactly the images of this folder")
    parser.add_argument("--height", type=int, default=STRIP_SHAPE[0], help="image height in pixels")
    parser.add_argument("--width", type=int, default=STRIP_SHAPE[1], help="image width in pixels")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    return parser.parse_args(argv)


def format_report(result: dict) -> str:
    """``score_csv``'s result as text: the Dice and the all-empty baseline, overall and per class."""
    empty = {"score": result["empty_baseline"], "per_class": result["empty_baseline_per_class"]}
    return f"{result['n_images']} images x 4 classes\n" + per_class_table({"Dice": result, "empty": empty}, digits=5)


def main(argv=None) -> None:
    args = parse_args(argv)
    image_ids = list_images(args.images) if args.images else None
    result = score_csv(args.pred, args.truth, image_ids, (args.height, args.width),
                       progress=True, verbose=not args.json)
    print(json.dumps(result) if args.json else format_report(result))


if __name__ == "__main__":
    main()
