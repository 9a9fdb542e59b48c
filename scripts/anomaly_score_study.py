"""Which image-level statistic of an anomaly map tells a defective strip
from a good one best: any-defect ROC AUC of each candidate
(models/anomaly_score.py) on strips an anomaly model predicted.

    python predict.py --checkpoint runs/autoencoder/best.pt --images VAL_IMAGES --out outputs/ae_val
    python scripts/anomaly_score_study.py --anomaly outputs/ae_val/anomaly --images VAL_IMAGES \\
        --truth data/synthetic/train.csv [--margins 0,8,16,32] [--ks 100,500,2000] [--json OUT.json]

Choose on a validation fold (the autoencoder's own fold-0 strips: labels it
never trained on, since it learns from defect-free strips only); then confirm
the choice once on the held-out test strips. Prints one row per candidate,
best first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from core.files import atomic_write_text
from core.progress import progress
from datasets.io import read_image
from datasets.severstal import list_images, read_mask_table, table_to_rles
from inference.image_scores import UINT16_MAX, read_anomaly_png
from models.anomaly_score import grey_of, image_score


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anomaly", type=Path, required=True, help="predict.py's OUT/anomaly (<stem>.png maps)")
    parser.add_argument("--images", type=Path, required=True, help="the strips those maps are of")
    parser.add_argument("--truth", type=Path, required=True, help="masks csv holding (at least) those strips")
    parser.add_argument("--margins", default="0,8,16,32", help="px kept away from the off-strip frame")
    parser.add_argument("--ks", default="100,500,2000", help="pixels averaged by top_mean")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    return parser.parse_args(argv)


def candidates(margins: list[int], ks: list[int]) -> list[dict]:
    out = [{"statistic": "max"}]
    for margin in margins:
        out.append({"statistic": "max_on_strip", "margin": margin})
        out.append({"statistic": "excess", "margin": margin})
        out += [{"statistic": "top_mean", "margin": margin, "k": k} for k in ks]
    return out


def study(anomaly_dir: Path, images: Path, truth_csv: Path, margins: list[int], ks: list[int]) -> list[dict]:
    names = list_images(images)
    if not names:
        raise SystemExit(f"no images in {images}")
    rles = table_to_rles(read_mask_table(truth_csv))
    defective = np.array([bool(rles.get(n)) for n in names])
    if defective.all() or not defective.any():
        raise SystemExit(f"{images}: needs good and defective strips for a ROC AUC ({defective.sum()} of "
                         f"{len(names)} defective)")
    options = candidates(margins, ks)
    scores = np.zeros((len(options), len(names)))
    for j, name in enumerate(progress(names, True, desc="strips")):
        anomaly = read_anomaly_png(anomaly_dir / f"{Path(name).stem}.png").astype(np.float32) / UINT16_MAX
        grey = grey_of(read_image(images / name))
        for i, option in enumerate(options):
            scores[i, j] = image_score(anomaly, grey, **option)
    rows = [{**option, "auroc": float(roc_auc_score(defective, s))} for option, s in zip(options, scores)]
    rows.sort(key=lambda r: -r["auroc"])
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    margins = [int(m) for m in args.margins.split(",") if m.strip()]
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    rows = study(args.anomaly, args.images, args.truth, margins, ks)
    print("| statistic | margin | k | any-defect AUROC |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['statistic']} | {r.get('margin', '-')} | {r.get('k', '-')} | {r['auroc']:.4f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
