"""Score a Severstal submission csv against a truth csv with the Kaggle metric.

    python scripts/evaluate.py --pred SUB.csv --truth TRUTH.csv [--images DIR] [--scores CSV]
        [--anomaly DIR] [--json]

Prints the score (mean Dice over every image and class, 1 where both masks are
empty), the per-class Dice and the all-empty baseline on the same images.
Either csv may use either layout. Images scored: those in --images, else every
image named in either file.

Then pass/fail, image by image, for "any defect" and per class: precision,
recall and F1 at the submission's operating point (a strip fails when its
mask is non-empty) and, from image-level scores (``--scores``; by default
``image_scores.csv`` beside the submission, which predict.py writes), ROC AUC
and the recall at a 1% false-fail rate. ``--anomaly DIR`` (predict.py's
``OUT/anomaly`` of an anomaly model) adds pixel-level ROC AUC and PRO against
the union of the defect masks (inference/passfail.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets.rle import STRIP_SHAPE
from datasets.severstal import csv_image_ids, list_images, read_mask_table, table_to_rles
from inference.image_scores import IMAGE_SCORES, read_scores_csv
from inference.metrics import per_class_table
from inference.passfail import anomaly_pairs, format_passfail, passfail_report, pixel_metrics, presence
from inference.scoring import score_csv


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="submission csv (either layout)")
    parser.add_argument("--truth", required=True, type=Path, help="ground-truth csv (either layout)")
    parser.add_argument("--images", type=Path, help="score exactly the images of this folder")
    parser.add_argument("--height", type=int, default=STRIP_SHAPE[0], help="image height in pixels")
    parser.add_argument("--width", type=int, default=STRIP_SHAPE[1], help="image width in pixels")
    parser.add_argument("--scores", type=Path,
                        help="image-level scores csv (ImageId,score[,score_1..4]); default: image_scores.csv "
                             "beside --pred, when there is one")
    parser.add_argument("--anomaly", type=Path, help="folder of 16-bit anomaly maps <stem>.png: pixel AUROC, PRO")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    return parser.parse_args(argv)


def format_report(result: dict) -> str:
    """``score_csv``'s result as text: the Dice and the all-empty baseline, overall and per class."""
    empty = {"score": result["empty_baseline"], "per_class": result["empty_baseline_per_class"]}
    return f"{result['n_images']} images x 4 classes\n" + per_class_table({"Dice": result, "empty": empty}, digits=5)


def passfail(args, image_ids: list[str]) -> dict:
    """Pass/fail metrics of the submission (and scores, anomaly maps when given)."""
    shape = (args.height, args.width)
    pred, truth = (table_to_rles(read_mask_table(path, shape)) for path in (args.pred, args.truth))
    scores_path = args.scores or args.pred.with_name(IMAGE_SCORES)
    scores = None
    if args.scores or scores_path.is_file():
        table = read_scores_csv(scores_path, image_ids)
        class_columns = [f"score_{c}" for c in range(1, 5)]
        scores = table[class_columns].to_numpy() if set(class_columns) <= set(table) else table["score"].to_numpy()
    result = {"image": passfail_report(presence(truth, image_ids), presence(pred, image_ids), scores),
              "scores": str(scores_path) if scores is not None else None}
    if args.anomaly:
        result["pixel"] = pixel_metrics(anomaly_pairs(args.anomaly, truth, image_ids, shape))
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    image_ids = list_images(args.images) if args.images else None
    result = score_csv(args.pred, args.truth, image_ids, (args.height, args.width),
                       progress=True, verbose=not args.json)
    if image_ids is None:
        image_ids = sorted(set(csv_image_ids(args.pred)) | set(csv_image_ids(args.truth)))
    result["passfail"] = passfail(args, image_ids)
    if args.json:
        print(json.dumps(result))
        return
    print(format_report(result))
    print(format_passfail(result["passfail"]["image"]))
    if "pixel" in result["passfail"]:
        pixel = result["passfail"]["pixel"]
        print(f"anomaly maps: pixel AUROC {pixel['pixel_auroc']:.4f}, PRO (FPR <= 0.3) {pixel['pro']:.4f} "
              f"over {pixel['n_regions']} defect regions")


if __name__ == "__main__":
    main()
