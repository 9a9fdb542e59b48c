"""COCO box and mask mAP of a Mask R-CNN checkpoint on its validation fold
(or on a folder with a truth csv).

    python scripts/eval_coco.py --checkpoint runs/maskrcnn_demo/best.pt
    python scripts/eval_coco.py --checkpoint best.pt --images data/synthetic/test_images --truth data/synthetic/test_truth.csv
    python scripts/eval_coco.py --checkpoint best.pt --device cuda:1

--device: auto (the default: cuda when present, else the CPU) | cpu | cuda | cuda:N.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.distributed import resolve_device
from datasets.severstal import Annotations
from inference.coco_eval import evaluate_instances
from models import load_model
from training.data import load_run_data


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", help="image folder (default: the run's validation fold)")
    parser.add_argument("--truth", help="truth csv for --images, either layout")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, key="--device")
    except RuntimeError as err:  # an unknown device, or CUDA asked for where there is none
        parser.error(f"--device {args.device}: {err}")
    try:
        model, cfg = load_model(args.checkpoint, device)
    except FileNotFoundError as err:
        raise SystemExit(f"eval_coco.py: {err}") from None
    if not hasattr(model, "detect"):
        raise SystemExit(f"{args.checkpoint} holds a {cfg.model.name} model; COCO mAP needs an instance model (maskrcnn)")
    if args.images:
        if not args.truth:
            parser.error("--images needs --truth")
        annotations = Annotations.load(args.truth, args.images, (cfg.data.image_height, cfg.data.image_width))
        image_ids = annotations.image_ids
    else:
        data = load_run_data(cfg)
        annotations, image_ids = data.annotations, data.val_ids
    metrics = evaluate_instances(model, annotations, image_ids, device, min_area=cfg.data.min_instance_area)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{len(image_ids)} images")
        for key, value in metrics.items():
            print(f"{key:<16}{value:.4f}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
