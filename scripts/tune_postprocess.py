"""Tune per-class post-processing on saved probability maps.

    python scripts/tune_postprocess.py --probs outputs/val_probs --truth data/train.csv \
        --out postprocess.json [--images data/train_images]

--probs holds <image stem>.npz files as ``predict.py --save-probs`` writes
them (key "probs": float16 [4, H, W]; optional "class_probs": [4], which
turns on the search over class gates). --truth is a csv of either layout;
an image with no row in it is defect-free. Without --images every npz in
--probs is scored; with it (an image folder, or a text file of image ids
one per line) exactly those images are, and each must have an npz.
The chosen settings go to --out, read back by ``postprocess.file``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from datasets.severstal import Annotations, list_images, read_mask_table, table_to_rles
from inference.postprocess import (
    GATES,
    MIN_COMPONENT_AREAS,
    MIN_TOTAL_AREAS,
    THRESHOLDS,
    load_probs,
    tune,
)


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


def prob_files(probs_dir: Path, images: Path | None) -> list[Path]:
    """The npz files to score, in a fixed order."""
    if images is None:
        files = sorted(probs_dir.glob("*.npz"))
        if not files:
            raise SystemExit(f"no .npz files in {probs_dir}")
        return files
    ids = list_images(images) if images.is_dir() else [s.strip() for s in images.read_text().splitlines() if s.strip()]
    files = [probs_dir / f"{Path(i).stem}.npz" for i in ids]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(files)} images in {images} have no probabilities, e.g. {missing[0]}")
    return files


def samples(files: list[Path], annotations: Annotations, ids_by_stem: dict[str, str]):
    """(probs, truth[, class_probs]) per file, loaded one at a time."""
    for path in tqdm(files, desc="tuning", unit="image"):
        probs, class_probs = load_probs(path)
        truth = annotations.masks(ids_by_stem.get(path.stem, path.stem), probs.shape[1:])
        yield (probs, truth) if class_probs is None else (probs, truth, class_probs)


def report(result) -> str:
    pp, lines = result.postprocess, [f"{result.n_images} images"]
    lines.append(f"{'class':>5} {'threshold':>9} {'min_comp':>8} {'min_total':>9} {'gate':>5} {'before':>7} {'after':>7}")
    for c, key in enumerate(result.after["per_class"]):
        lines.append(
            f"{key:>5} {pp.threshold[c]:>9.2f} {pp.min_component_area[c]:>8d} {pp.min_total_area[c]:>9d} "
            f"{pp.gate[c]:>5.2f} {result.before['per_class'][key]:>7.4f} {result.after['per_class'][key]:>7.4f}"
        )
    lines.append(f"{'all':>5} {'':>34} {result.before['score']:>7.4f} {result.after['score']:>7.4f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    files = prob_files(args.probs, args.images)
    shape = tuple(load_probs(files[0])[0].shape[1:])
    table = read_mask_table(args.truth, shape, verbose=True)
    ids_by_stem = {Path(i).stem: i for i in table["ImageId"]}
    annotations = Annotations(args.probs, sorted(ids_by_stem.values()), table_to_rles(table), shape)
    result = tune(samples(files, annotations, ids_by_stem), args.thresholds, args.min_component_areas,
                  args.min_total_areas, args.gates)
    print(report(result))
    result.postprocess.to_json(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
