"""Mask R-CNN training step on CPU: torchvision's budgets against the demo's, side by side.

    python scripts/bench_maskrcnn.py [--config configs/maskrcnn_demo_cpu.yaml] [--steps 8]

Times the Trainer's ``train_step`` (forward, backward, the config's clipping and
optimiser step, in the precision train.amp resolves to, this process's torch
threads) on the same training crops for three settings of the same
ResNet-18-FPN: torchvision's defaults on 256x256 crops; the config's proposal,
RoI, mask-head and FPN budgets on 256x256 crops; the config as it is (its
crop size too). Each model takes 2 untimed steps first; the crops are the
config's training data (synthetic when data.root is missing). Prints seconds
per step and per crop, and the ratios against the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from core.cli import CONFIGS, parse_with_overrides
from core.config import MASKRCNN_BUDGETS, ConfigError, MaskRCNNConfig, load_config
from core.precision import Precision, machine_summary, resolve_amp
from datasets.synthetic import make_dataset
from models import build_model
from training.data import build_train_dataset, load_run_data
from training.trainer import local_trainer


def torchvision_budgets() -> list[str]:
    """Overrides that put every budget back to torchvision's default."""
    defaults = MaskRCNNConfig()
    return [f"--model.maskrcnn.{key}={getattr(defaults, key)}" for key in MASKRCNN_BUDGETS]


def seconds_per_step(cfg, train_set, batches, precision: Precision, warmup: int = 2) -> float:
    """Mean seconds of ``Trainer.train_step`` over ``batches`` after the first ``warmup``."""
    torch.manual_seed(0)
    trainer = local_trainer(cfg, build_model(cfg), train_set, precision)
    times = []
    for batch in batches:
        started = time.perf_counter()
        trainer.train_step([batch])
        times.append(time.perf_counter() - started)
    return sum(times[warmup:]) / len(times[warmup:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIGS / "maskrcnn_demo_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting (after 2 untimed)")
    args, overrides = parse_with_overrides(parser, argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        raise SystemExit(f"bench_maskrcnn.py: {err}") from None
    if not Path(cfg.data.root).is_dir():
        make_dataset(cfg.data.root, n_train=64, n_test=0, seed=0, progress=False)
    data = load_run_data(cfg)
    settings = {
        "torchvision defaults, 256x256 crops": torchvision_budgets() + ["--data.crop_width=256"],
        "config budgets, 256x256 crops": ["--data.crop_width=256"],
        f"config as is ({cfg.data.crop_height}x{cfg.data.crop_width} crops)": [],
    }
    precision = resolve_amp(cfg.train.amp, torch.device("cpu"))
    print(f"{args.config}: {cfg.model.maskrcnn.backbone}-FPN, batch {cfg.data.batch_size}, "
          f"{args.steps} timed steps each")
    print(f"{machine_summary()}; train.amp={cfg.train.amp} -> {precision.describe()}")
    print(f"{'setting':<44}{'s/step':>8}{'s/crop':>8}{'speed-up':>10}")
    reference = None
    for name, extra in settings.items():
        run_cfg = load_config(args.config, [*overrides, *extra])
        dataset = build_train_dataset(run_cfg, data, "instance")
        n = run_cfg.data.batch_size
        batches = [dataset.collate_fn([dataset[(k * n + i) % len(dataset)] for i in range(n)])
                   for k in range(args.steps + 2)]
        step = seconds_per_step(run_cfg, dataset, batches, precision)
        reference = reference or step
        print(f"{name:<44}{step:>8.2f}{step / n:>8.2f}{reference / step:>9.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
