"""Tune per-class post-processing on saved probability maps.

    python scripts/tune_postprocess.py --probs outputs/val_probs --truth data/train.csv \
        --out postprocess.json [--images data/train_images]

--probs holds <image stem>.npz files as ``predict.py --save-probs`` (OUT/probs)
or ``scripts/cv.py`` (OUT/oof, out of fold) write them (key "probs": float16
[4, H, W]; optional "class_probs": [4], which turns on the search over class
gates). --truth is a csv of either layout; an image with no row in it is
defect-free. Without --images every npz in --probs is scored; with it (an
image folder, or a text file of image ids one per line) exactly those images
are, and each must have an npz. Prints the score before and after tuning and
the chosen settings per class; the settings go to --out, read back by
``postprocess.file``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.classes import CLASS_IDS
from datasets.severstal import Annotations, list_images, read_mask_table, table_to_rles
from inference.metrics import per_class_table
from inference.postprocess import (
    GATES,
    MIN_COMPONENT_AREAS,
    MIN_TOTAL_AREAS,
    THRESHOLDS,
    TuneResult,
    labelled_probs,
    load_probs,
    probs_path,
    tune,
)

SETTINGS = ("threshold", "min_component_area", "min_total_area", "gate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probs", required=True, type=Path, help="folder of <image stem>.npz probability maps")
    p.add_argument("--truth", required=True, type=Path, help="annotation csv (either layout)")
    p.add_argument("--out", required=True, type=Path, help="json to write the chosen settings to")
    p.add_argument("--images", type=Path, help="image folder or text file of image ids to score (default: every npz)")
    p.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    p.add_argument("--min-component-areas", type=int, nargs="+", default=MIN_COMPONENT_AREAS)
    p.add_argument("--min-total-areas", type=int, nargs="+", default=MIN_TOTAL_AREAS)
    p.add_argument("--gates", type=float, nargs="+", default=GATES, help="searched only when the npz have class_probs")
    return p.parse_args(argv)


def prob_files(probs_dir: Path, images: Path | None) -> dict[str, Path]:
    """{image stem: npz} to score, in a fixed order: every npz of ``probs_dir``
    (save_probs' hidden temporary files aside), or one per image of
    ``images``, each of which must exist."""
    if images is None:
        files = {p.stem: p for p in sorted(probs_dir.glob("*.npz")) if not p.name.startswith(".")}
        if not files:
            raise SystemExit(f"no .npz files in {probs_dir}")
        return files
    ids = list_images(images) if images.is_dir() else [s.strip() for s in images.read_text().splitlines() if s.strip()]
    files = {Path(i).stem: probs_path(probs_dir, i) for i in ids}
    missing = [f for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(files)} images in {images} have no probabilities, e.g. {missing[0]}")
    return files


def truth_by_stem(truth_csv: Path, shape: tuple[int, int]) -> Annotations:
    """The masks of ``truth_csv`` (either layout) keyed by image stem, as the
    npz files are named; an image it does not name is defect-free."""
    rles = {Path(i).stem: r for i, r in table_to_rles(read_mask_table(truth_csv, shape, verbose=True)).items()}
    return Annotations(truth_csv.parent, sorted(rles), rles, shape)


def report(result: TuneResult) -> str:
    """The score before and after tuning, and the chosen settings, per class."""
    settings = {name: {"per_class": dict(zip(map(str, CLASS_IDS), getattr(result.postprocess, name)))}
                for name in SETTINGS}
    return f"{result.n_images} images\n" + per_class_table({"before": result.before, "after": result.after,
                                                            **settings})


def main(argv=None) -> None:
    args = parse_args(argv)
    files = prob_files(args.probs, args.images)
    shape = tuple(load_probs(next(iter(files.values())))[0].shape[1:])
    samples = labelled_probs(files, truth_by_stem(args.truth, shape), show=True)
    result = tune(samples, args.thresholds, args.min_component_areas, args.min_total_areas, args.gates)
    print(report(result))
    result.postprocess.to_json(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
