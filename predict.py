"""Predict defect masks for a folder of strips: tiled inference, post-processing,
a Kaggle submission and per-image mask files.

    python predict.py --checkpoint RUN/best.pt [MORE.pt ...] --images DIR --out OUT [--section.key=value ...]
    torchrun --nproc_per_node=N predict.py ...      # the same, images sharded over N processes

Writes OUT/submission.csv (``ImageId,EncodedPixels,ClassId``, 4 rows per image;
``--format competition``: ``ImageId_ClassId,EncodedPixels``) and
OUT/masks/<stem>.png (uint8 class id 0..4 per pixel, the image's size); with
``--save-probs`` OUT/probs/<stem>.npz (what scripts/tune_postprocess.py
reads), with ``--overlays`` OUT/overlays/<stem>.jpg, with ``--gradcam``
OUT/gradcam/<stem>.jpg (why the classification head flagged each class). Unreadable images are
skipped and listed in OUT/skipped.txt (``--strict``: exit non-zero). OUT/image_scores.csv holds
image-level scores per class (``scripts/evaluate.py`` reads them for pass/fail); an anomaly model
(``model.name: autoencoder``) also writes OUT/anomaly/<stem>.png (16-bit map) and
OUT/anomaly_scores.csv (``ImageId,score``); overlays of the classical pipeline show its steps.

Several checkpoints (e.g. cross-validation folds) are averaged as
probabilities. The config is the first checkpoint's, with ``--predict.*`` and
``--postprocess.*`` overrides on top. Post-processing, by default, is the one
tuned on the checkpoint's validation fold when it was trained (for the folds
of one cross-validation: the settings it tuned out of fold,
``<cv>/postprocess.json``); ``--postprocess.file=tuned.json`` or single
``--postprocess.*`` keys override it, and the run prints what it applies and
where it came from. ``--resume`` predicts only the images an interrupted run
into the same OUT did not finish.

``--engine ray`` runs the same prediction as a Ray Data pipeline
(workflows/ray_predict.py: a pool of actors holding the models, one per GPU
or CPU actors, with Ray's retries), on a local Ray or a cluster
(``--ray.address=auto``), with ``--ray.*`` settings; ``--images`` may then
also be a text file of paths or URIs (s3://...). Same outputs, without
``--save-probs``, ``--overlays`` or ``--gradcam``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import parse_with_overrides
from core.config import ConfigError
from core.distributed import cleanup, init_distributed
from datasets.severstal import COMPETITION, RERELEASED
from inference.predictor import SKIPPED, RunSummary, predict_folder
from workflows.cross_validation import load_predictor
from workflows.ray_predict import predict_with_ray

OVERRIDABLE = ("predict", "postprocess", "ray")  # the config sections predict.py may override


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, nargs="+", type=Path, help="one or more checkpoints, averaged")
    parser.add_argument("--images", required=True,
                        help="folder of images to predict (--engine ray: also a text file of paths or URIs)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--format", choices=[RERELEASED, COMPETITION], default=RERELEASED,
                        help="submission layout: ImageId,EncodedPixels,ClassId or ImageId_ClassId,EncodedPixels")
    parser.add_argument("--save-probs", action="store_true", help="also write OUT/probs/<stem>.npz")
    parser.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<stem>.jpg")
    parser.add_argument("--gradcam", action="store_true",
                        help="also write OUT/gradcam/<stem>.jpg: Grad-CAM of the classification head per class")
    parser.add_argument("--full-frame", action="store_true", help="whole strips, no tiles: --predict.full_frame=true")
    parser.add_argument("--resume", action="store_true", help="keep the images an earlier run into OUT finished")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when an image could not be read")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--engine", choices=["plain", "ray"], default="plain",
                        help="plain: this process (or torchrun's); ray: a Ray Data pipeline (pip install -e .[ray])")
    args, overrides = parse_with_overrides(parser, argv, sections=OVERRIDABLE)
    if args.full_frame:
        overrides.append("--predict.full_frame=true")
    return args, overrides


def report(summary: RunSummary) -> str:
    lines = [f"{summary.n_written} of {summary.n_images} images in {summary.submission} "
             f"({summary.n_predicted} predicted now)"]
    if summary.skipped:
        lines.append(f"skipped {len(summary.skipped)} unreadable images "
                     f"(listed in {summary.submission.with_name(SKIPPED)}):")
        lines += [f"  {name}: {error}" for name, error in summary.skipped.items()]
    return "\n".join(lines)


def predict_on_ray(args: argparse.Namespace, overrides: list[str]) -> RunSummary:
    """``--engine ray``: the same outputs from workflows.ray_predict."""
    flags = {"--save-probs": args.save_probs, "--overlays": args.overlays, "--gradcam": args.gradcam,
             f"--device={args.device}": args.device != "auto"}
    unsupported = [flag for flag, given in flags.items() if given]
    try:
        if unsupported:
            raise ConfigError(f"--engine ray does not take {', '.join(unsupported)} (the workers' device is "
                              "set by --ray.num_gpus_per_worker); use the plain engine")
        summary = predict_with_ray(args.checkpoint, args.images, args.out, overrides, layout=args.format,
                                   resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"predict.py: {err}") from None
    print(report(summary), flush=True)
    if args.strict and summary.skipped:
        raise SystemExit(f"--strict: {len(summary.skipped)} images could not be read")
    return summary


def main(argv=None) -> RunSummary:
    args, overrides = parse_args(argv)
    if args.engine == "ray":
        return predict_on_ray(args, overrides)
    dist_info = init_distributed(args.device, key="--device")
    try:
        predictor, postprocess, origin = load_predictor(args.checkpoint, overrides, dist_info.device)
        if dist_info.is_main:
            print(f"predict.amp: {predictor.precision.describe()}", flush=True)
            print(f"post-processing: {origin}", flush=True)
        summary = predict_folder(predictor, postprocess, args.images, args.out,
                                 dist_info, layout=args.format, save_probs=args.save_probs,
                                 overlays=args.overlays, gradcam=args.gradcam, resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"predict.py: {err}") from None
    if dist_info.is_main:
        print(report(summary), flush=True)
    cleanup()
    if args.strict and summary.skipped:
        raise SystemExit(f"--strict: {len(summary.skipped)} images could not be read")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
