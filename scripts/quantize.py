"""Static int8 quantisation of an exported file, and what it costs in score.

    python scripts/quantize.py model.onnx --calibrate DATA_ROOT --out model.int8.onnx \\
        [--strips 16] [--images data/synthetic/test_images --truth data/synthetic/test_truth.csv]

Calibrated on ``--strips`` training strips of DATA_ROOT (their tiles, as
predict.py cuts them; inference/onnx_quantize.py). With ``--images`` and
``--truth`` both files predict those held-out images through ONNX Runtime
(the same tiler and post-processing as predict.py) and the Kaggle scores
are printed side by side. Nothing is refused: the change is reported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from core.distributed import DistInfo
from datasets.severstal import list_images
from inference.metrics import per_class_table
from inference.onnx_quantize import quantize_file
from inference.predictor import predict_folder
from inference.scoring import score_csv
from workflows.cross_validation import load_predictor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a file of scripts/export.py")
    parser.add_argument("--calibrate", required=True, type=Path, help="data root with the training images")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--strips", type=int, default=16, help="training strips to calibrate on")
    parser.add_argument("--images", type=Path, help="held-out images to score both files on")
    parser.add_argument("--truth", type=Path, help="their truth csv")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"ONNX file not found: {args.model} (make one with scripts/export.py)")
    if not args.calibrate.is_dir():
        parser.error(f"--calibrate {args.calibrate}: not a folder (the data root whose training images calibrate)")
    if (args.images is None) != (args.truth is None):
        parser.error("--images and --truth go together (the held-out strips and their truth csv)")
    return args


def held_out_score(model: Path, images: Path, truth: Path, out: Path) -> dict:
    predictor, postprocess, _ = load_predictor([model], ["--predict.num_workers=0"], "cpu")
    summary = predict_folder(predictor, postprocess, images, out, DistInfo(0, 1, 0, torch.device("cpu")))
    return score_csv(summary.submission, truth, list_images(images))


def main(argv=None) -> dict:
    args = parse_args(argv)
    quantize_file(args.model, args.out, args.calibrate, args.strips)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB; {args.model} is "
          f"{args.model.stat().st_size / 2**20:.1f} MiB)")
    if args.images is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        scores = {name: held_out_score(path, args.images, args.truth, Path(tmp) / name)
                  for name, path in (("float32", args.model), ("int8", args.out))}
    print(per_class_table(scores, digits=4))
    change = scores["int8"]["score"] - scores["float32"]["score"]
    print(f"held-out Kaggle score change, int8 - float32: {change:+.4f} on {scores['int8']['n_images']} images")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
