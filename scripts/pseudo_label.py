r"""Pseudo-label the confident test images, for a further round of training.

    python predict.py --checkpoint RUN/best.pt --images data/test_images --out OUT --save-probs
    python scripts/pseudo_label.py --probs OUT/probs --images data/test_images --out OUT/pseudo.csv \
        [--low 0.2] [--high 0.8] [--postprocess.key=value ... | --postprocess.file=tuned.json]
    python train.py ... --data.pseudo_csv=OUT/pseudo.csv --data.pseudo_images=data/test_images

--probs holds <image stem>.npz files as ``predict.py --save-probs`` writes
them (key "probs": float16 [4, H, W]; optional "class_probs": [4]). An image
is confident when every class's score (its class probability when the npz
has one, else its largest pixel probability) is <= --low or >= --high; see
datasets/pseudo.py. A confident image's masks are its post-processed
probabilities (default settings, or --postprocess.*) with the classes
scored <= --low emptied; one where a class scored >= --high comes out empty
is left out. --out lists every pseudo-labelled image, defect-free ones
included, in the competition layout (ImageId_ClassId,EncodedPixels).
Training adds them to the training set only; validation never sees them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from core.classes import CLASS_IDS
from core.cli import parse_with_overrides
from core.config import ConfigError, load_config
from datasets.pseudo import pseudo_masks, select_confident, write_pseudo_csv
from datasets.rle import rle_encode
from datasets.severstal import list_images
from inference.postprocess import PostProcess, load_probs, probs_path


def parse_args(argv=None) -> tuple[argparse.Namespace, PostProcess]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--probs", required=True, type=Path, help="folder of <image stem>.npz probability maps")
    p.add_argument("--images", required=True, type=Path, help="the folder of the images predicted")
    p.add_argument("--out", required=True, type=Path, help="pseudo-label csv to write")
    p.add_argument("--low", type=float, default=0.2, help="a class scored at most this is confidently absent")
    p.add_argument("--high", type=float, default=0.8, help="a class scored at least this is confidently present")
    args, overrides = parse_with_overrides(p, argv, sections=("postprocess",))
    if not 0.0 <= args.low < args.high <= 1.0:
        p.error(f"need 0 <= --low < --high <= 1, got --low {args.low} --high {args.high}")
    try:
        postprocess = PostProcess.from_config(load_config(overrides=overrides).postprocess)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    return args, postprocess


def prob_files(probs_dir: Path, images: Path) -> dict[str, Path]:
    """{image id: npz} for the images of ``images`` with probabilities in ``probs_dir``."""
    names = list_images(images)
    files = {name: probs_path(probs_dir, name) for name in names}
    found = {name: path for name, path in files.items() if path.is_file()}
    if not found:
        raise SystemExit(f"none of the {len(names)} images in {images} has probabilities in {probs_dir}")
    if len(found) < len(names):
        print(f"{len(names) - len(found)} of {len(names)} images have no probabilities in {probs_dir}; left out")
    return found


def pseudo_label(files: dict[str, Path], postprocess: PostProcess, low: float, high: float
                 ) -> tuple[dict[str, dict[int, str]], int]:
    """(RLEs of the confident images, ``{}`` when defect-free; how many
    confident images were dropped because a present class came out empty)."""
    rles, dropped = {}, 0
    for image_id, path in tqdm(files.items(), desc="pseudo-labelling", unit="image"):
        probs, class_probs = load_probs(path)
        if not select_confident(probs, class_probs, low, high):
            continue
        masks = pseudo_masks(probs, class_probs, postprocess, low, high)
        if masks is None:
            dropped += 1
            continue
        rles[image_id] = {c: rle_encode(m) for c, m in zip(CLASS_IDS, masks) if m.any()}
    return rles, dropped


def report(rles: dict[str, dict[int, str]], n_images: int, dropped: int) -> str:
    n = len(rles)
    lines = [f"{n} of {n_images} images confident ({100 * n / n_images:.1f}%)"]
    if dropped:
        lines.append(f"{dropped} more left out: a class scored >= --high came out empty after post-processing")
    lines.append(f"{'defect-free':>14}: {sum(not r for r in rles.values())}")
    lines += [f"{f'with class {c}':>14}: {sum(c in r for r in rles.values())}" for c in CLASS_IDS]
    return "\n".join(lines)


def main(argv=None) -> dict[str, dict[int, str]]:
    args, postprocess = parse_args(argv)
    files = prob_files(args.probs, args.images)
    try:
        rles, dropped = pseudo_label(files, postprocess, args.low, args.high)
    except ValueError as err:  # e.g. gates without class probabilities
        raise SystemExit(f"pseudo_label.py: {err}") from None
    print(report(rles, len(files), dropped))
    write_pseudo_csv(args.out, rles)
    print(f"wrote {args.out}")
    return rles


if __name__ == "__main__":
    main(sys.argv[1:])
