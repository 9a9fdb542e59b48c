"""Write generated defect strips in the Severstal layout, for training.

    python scripts/synthesize.py --checkpoint R/last.pt --data.root=D --out S --per-class 2:500,4:200 [--seed 0]
    python train.py --config ... --data.extra_root=S     # added to training only, never to validation

Each strip is a defect-free training strip of the GAN's fold with one real
instance shape of the class (flipped, scaled, shifted) painted into a patch
window by the generator; its mask is that shape. Writes
``S/train_images/gan_c<class>_<k>.jpg``, ``S/train.csv`` (written last: a
folder with one is complete: a rerun with the same arguments leaves it alone,
one with another checkpoint, ``--per-class`` or ``--seed`` is refused), ``S/synthesis.json`` and
``S/grid.png`` (per class, real patches above generated ones).
``--section.key=value`` overrides apply to the checkpoint's stored GAN config
(e.g. ``--data.root``, ``--train.device``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli import parse_with_overrides
from core.config import ConfigError
from training.gan import synthesize


def parse_per_class(text: str) -> dict[int, int]:
    """"2:500,4:200" -> {2: 500, 4: 200}."""
    counts = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            class_id, count = (int(v) for v in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: give class:count, e.g. 2:500") from None
        if class_id not in (1, 2, 3, 4) or count < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: the class must be 1..4 and the count >= 1")
        counts[class_id] = count
    if not counts:
        raise argparse.ArgumentTypeError("give at least one class:count")
    return counts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a GAN checkpoint (train_gan.py's last.pt)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (Severstal layout)")
    parser.add_argument("--per-class", required=True, type=parse_per_class, help="class:count,... e.g. 2:500,4:200")
    parser.add_argument("--seed", type=int, default=0, help="seed of the backgrounds, shapes and noise (default 0)")
    args, overrides = parse_with_overrides(parser, argv)
    if (args.out / "train.csv").is_file():
        record = args.out / "synthesis.json"
        done = json.loads(record.read_text()) if record.is_file() else {}  # none: made by something else, refused
        asked = {"checkpoint": str(args.checkpoint), "per_class": {str(c): n for c, n in sorted(args.per_class.items())},
                 "seed": args.seed}
        if differ := [k for k, v in asked.items() if done.get(k) != v]:
            raise SystemExit(f"{args.out} already holds a synthesis made with other arguments ("
                             + ", ".join(f"{k}: {done.get(k)} there, {asked[k]} now" for k in differ)
                             + "): give another --out or delete that folder")
        print(f"{args.out} already holds this synthesis (train.csv); left as it is", flush=True)
        return done
    try:
        summary = synthesize(args.checkpoint, args.out, args.per_class, overrides, seed=args.seed)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    print(f"wrote {summary['images']} strips to {args.out} (grid: {args.out / 'grid.png'})", flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
