"""Train the mask-conditioned defect GAN on a fold's training strips.

    python scripts/train_gan.py --config configs/gan_demo_cpu.yaml --data.root=D --output_dir=R [--resume]

The generator paints a defect of a class into a patch given its mask
(models/gan.py); it learns from real patches of the training strips of
``data.fold`` (never the validation fold) of ``data.root``'s split. The config
is core/gan_config.py's (a YAML holds what differs; ``--section.key=value``
overrides). ``R/last.pt`` is written atomically every
``train.checkpoint_every`` steps; ``--resume`` continues from it (its stored
config, with the command line's overrides on top) and ends where an
uninterrupted run ends. Real-vs-generated grids go to ``R/samples/`` and to
W&B (offline by default). Then: scripts/synthesize.py --checkpoint R/last.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.checkpoint import load_checkpoint
from core.cli import parse_with_overrides
from core.config import ConfigError
from core.gan_config import GanConfig, load_gan_config
from core.precision import machine_summary
from training.gan import LAST, train_gan


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file; holds only what differs from core/gan_config.py")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt if it exists")
    return parse_with_overrides(parser, argv)


def resolve_config(args, overrides) -> GanConfig:
    cfg = load_gan_config(args.config, overrides)
    last = Path(cfg.output_dir) / LAST
    if args.resume and last.is_file():
        stored = load_checkpoint(last)["config"]
        cfg = load_gan_config(base=stored, overrides=[*overrides, f"--output_dir={cfg.output_dir}"])
    return cfg


def main(argv=None):
    args, overrides = parse_args(argv)
    try:
        cfg = resolve_config(args, overrides)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    print(machine_summary(), flush=True)
    return train_gan(cfg, resume=args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
