"""Training throughput of a config on this machine, measured side by side.

    python scripts/bench_train.py [--config configs/demo_cpu.yaml] [--steps 12] [--archs FPN,Unet]
                                  [--section.key=value ...]

Prints the CPU's capability and what ``train.amp=auto`` resolves to here,
then training images/s in float32 and in bfloat16 autocast (the Trainer's
``train_step``: forward, backward and optimiser step, on a fixed batch, so
loading is excluded), and
data-loader samples/s of one worker alone (JPEG decode + crop +
augmentation, in this process, after an untimed pass). The target: one
loader worker delivers at least 4x what one training process consumes.
``--archs`` also times the config with each of those smp architectures in
the precision ``auto`` picks, in the same run, at smp's default widths
(``model.smp.arch_kwargs`` emptied). On a CPU without native bf16 the bf16 steps
are about 20x slower: ``--steps 2`` keeps that part short.
``--validation N`` also times ``Trainer.evaluate`` on the first N strips of
the validation fold, once per ``train.val_inference`` (``predict``: tiles as
predict.py, in ``predict.amp``; ``whole``: one pass per strip, in the
precision ``train.amp=auto`` picks), alternating, after an untimed pass of each.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from core.cli import CONFIGS, parse_with_overrides
from core.config import ConfigError, load_config
from core.precision import EmulatedBF16Warning, machine_summary, resolve_amp
from datasets.synthetic import make_dataset
from models import build_model, check_model_config
from training.data import build_train_dataset, build_val_dataset, load_run_data
from training.trainer import local_trainer


def loader_rate(dataset, n: int) -> float:
    """Samples/s of ``dataset[i]`` in this process (what one worker does),
    after an untimed pass over the same items. In a fresh process the first
    image with a mask took 0.35 to 0.49 s (the RLE kernel's first call loads
    it, docs/BENCHMARKS.md), which alone took 60 timed samples from about 300/s to 70-110/s."""
    for i in range(n):  # one-time set-up; the files into the page cache
        dataset[i % len(dataset)]
    started = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    return n / (time.perf_counter() - started)


def train_rate(cfg, train_set, batch, amp: str, steps: int) -> float:
    """Images/s of ``Trainer.train_step`` on a fixed batch (forward, backward
    and optimiser step with the config's clipping, EMA and schedule; the
    batch repeated ``train.accum_steps`` times per step), after 2 untimed steps."""
    torch.manual_seed(0)
    trainer = local_trainer(cfg, build_model(cfg), train_set, resolve_amp(amp, torch.device("cpu")))
    micro_batches = [batch] * cfg.train.accum_steps
    for _ in range(2):
        trainer.train_step(micro_batches)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(micro_batches)
    return steps * len(micro_batches) * batch[0].shape[0] / (time.perf_counter() - started)


def validation_seconds(cfg, model, train_set, val_set, amp: str, modes: list[str], rounds: int = 2) -> dict:
    """Seconds of one ``Trainer.evaluate`` over ``val_set`` per validation
    mode, the best of ``rounds`` alternating runs, after an untimed one each."""
    best = {mode: float("inf") for mode in modes}
    for round_ in range(rounds + 1):
        for mode in modes:
            cfg.train.val_inference = mode
            trainer = local_trainer(cfg, model, train_set, resolve_amp(amp, torch.device("cpu")), val_set)
            started = time.perf_counter()
            trainer.evaluate()
            if round_:
                best[mode] = min(best[mode], time.perf_counter() - started)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIGS / "demo_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per precision")
    parser.add_argument("--samples", type=int, default=60, help="timed loader samples")
    parser.add_argument("--archs", default="", help="comma-separated smp architectures to time too (auto precision)")
    parser.add_argument("--validation", type=int, default=0, help="validation strips to time evaluate() on, "
                        "per train.val_inference (0: skip)")
    args, overrides = parse_with_overrides(parser, argv)
    cfg = load_config(args.config, overrides)
    others = {arch: load_config(args.config, [*overrides, f"--model.smp.arch={arch}", "--model.smp.arch_kwargs={}"])
              for arch in filter(None, args.archs.split(","))}
    for arch, other in [("", cfg), *others.items()]:  # a bad model fails now, not after the timed runs
        try:
            check_model_config(other)
        except ConfigError as err:
            raise SystemExit(f"bench_train.py: {f'--archs {arch}: ' if arch else ''}{err}") from None
    if not Path(cfg.data.root).is_dir():
        make_dataset(cfg.data.root, n_train=64, n_test=0, seed=0, progress=False)
    data = load_run_data(cfg)
    model_kind = build_model(cfg).target_kind
    dataset = build_train_dataset(cfg, data, model_kind)
    batch = dataset.collate_fn([dataset[i] for i in range(cfg.data.batch_size)])

    torch.set_num_threads(torch.get_num_threads())
    print(f"config {args.config}: {cfg.model.name} {cfg.model.smp.arch}/{cfg.model.smp.encoder} "
          f"{cfg.model.smp.arch_kwargs}, batch {cfg.data.batch_size} x {cfg.data.crop_height}x{cfg.data.crop_width}, "
          f"{torch.get_num_threads()} torch threads")
    auto = resolve_amp("auto", torch.device("cpu"))
    print(f"{machine_summary()}; train.amp=auto -> {auto.describe()}")
    fp32 = train_rate(cfg, dataset, batch, "off", args.steps)
    with warnings.catch_warnings():  # timing bf16 where it is emulated is the point here
        warnings.simplefilter("ignore", EmulatedBF16Warning)
        bf16 = train_rate(cfg, dataset, batch, "bf16", args.steps)
    loader = loader_rate(dataset, args.samples)
    consumer = max(fp32, bf16)
    print(f"{'measure':<38}{'value':>10}")
    print(f"{'train images/s, float32':<38}{fp32:>10.2f}")
    print(f"{'train images/s, bf16 autocast':<38}{bf16:>10.2f}")
    print(f"{'bf16 / float32':<38}{bf16 / fp32:>10.2f}x")
    print(f"{'loader samples/s, one worker':<38}{loader:>10.2f}")
    ratio = loader / consumer
    verdict = "meets" if ratio >= 4 else "misses"
    print(f"{'one worker / fastest training':<38}{ratio:>10.2f}x  ({verdict} the 4x target)")
    for arch, other in others.items():
        rate = train_rate(other, dataset, batch, auto.amp, args.steps)
        config_rate = bf16 if auto.amp == "bf16" else fp32
        print(f"{f'train images/s, {auto.amp}, {arch}*':<38}{rate:>10.2f}  "
              f"(config / {arch}*: {config_rate / rate:.2f}x)")
    if others:
        print("* at smp's default widths (model.smp.arch_kwargs emptied)")
    if args.validation:
        val_set = build_val_dataset(replace(data, val_ids=data.val_ids[: args.validation]))
        torch.manual_seed(0)
        seconds = validation_seconds(cfg, build_model(cfg), dataset, val_set, auto.amp, ["predict", "whole"])
        n = len(val_set)
        precision = {"predict": resolve_amp(cfg.predict.amp, torch.device("cpu"), key="predict.amp").amp,
                     "whole": auto.amp}  # predict infers in predict.amp, whole in the training's
        for mode, value in seconds.items():
            print(f"{f'validation s/strip, {mode} ({precision[mode]})':<38}{value / n:>10.3f}  ({n} strips)")
        print(f"{'validation predict / whole':<38}{seconds['predict'] / seconds['whole']:>10.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
