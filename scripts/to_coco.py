"""Convert Severstal masks to a COCO instance-segmentation json and back.

    python scripts/to_coco.py to-coco --csv train.csv --images train_images --out train_coco.json [--min-area N]
    python scripts/to_coco.py to-csv --coco in.json --out train.csv [--layout rereleased|competition]

The json (pycocotools RLE, one annotation per connected component) loads in
pycocotools' COCO/COCOeval and in labelling tools (CVAT, Labelbox); the way back
also reads polygons, so masks fixed in a labelling tool return to training.
Both outputs are written atomically.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from core.files import atomic_write_text
from datasets.coco import coco_to_rles, severstal_to_coco
from datasets.rle import STRIP_SHAPE
from datasets.severstal import COMPETITION, RERELEASED, Annotations, write_mask_csv


def to_coco(args: argparse.Namespace) -> None:
    annotations = Annotations.load(args.csv, args.images, (args.height, args.width), verbose=True)
    coco = severstal_to_coco(annotations, args.min_area)
    atomic_write_text(args.out, json.dumps(coco))
    per_class = Counter(ann["category_id"] for ann in coco["annotations"])
    print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} instances "
          f"(per class {dict(sorted(per_class.items()))})")


def to_csv(args: argparse.Namespace) -> None:
    rles = coco_to_rles(json.loads(Path(args.coco).read_text()))
    write_mask_csv(args.out, rles, args.layout)
    n_masks = sum(len(masks) for masks in rles.values())
    print(f"{args.out}: {args.layout} layout, {n_masks} masks on {len(rles)} images")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    coco = commands.add_parser("to-coco", help="Severstal csv + image folder -> COCO json")
    coco.add_argument("--csv", required=True, type=Path, help="train.csv, either layout")
    coco.add_argument("--images", required=True, type=Path, help="image folder (the list of images)")
    coco.add_argument("--out", required=True, type=Path, help="COCO json to write")
    coco.add_argument("--min-area", type=int, default=0, help="drop components with fewer pixels")
    coco.add_argument("--height", type=int, default=STRIP_SHAPE[0], help="image height in pixels")
    coco.add_argument("--width", type=int, default=STRIP_SHAPE[1], help="image width in pixels")
    coco.set_defaults(run=to_coco)
    csv = commands.add_parser("to-csv", help="COCO json -> Severstal csv")
    csv.add_argument("--coco", required=True, type=Path, help="COCO json (RLE or polygon segmentations)")
    csv.add_argument("--out", required=True, type=Path, help="csv to write")
    csv.add_argument("--layout", choices=[RERELEASED, COMPETITION], default=RERELEASED,
                     help="rereleased: one row per mask; competition: 4 rows per image")
    csv.set_defaults(run=to_csv)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
