"""Ablation: does copy-paste or GAN-generated data help the rare classes?

    nice -n 10 python scripts/ablate_augment.py --out runs/ablate_augment \\
        [--data data/synthetic --heldout HELD] [--seeds 0,1,2] [--settings low,full] \\
        [--variants none,copy_paste,gan,both] [--low-class2 5] [--recipe demo|reduced] [--section.key=value ...]

A *cell* is (setting, variant, seed): the recipe (``--recipe``) trained on
fold 0 of ``--data`` with ``train.seed`` = seed, then predicted (predict.py,
the checkpoint's own post-processing, tuned on its validation strips) on the
held-out strips ``HELD/test_images`` and scored against ``HELD/test_truth.csv``
(Kaggle score, per-class Dice, and any-defect recall and precision per class:
of the held-out strips holding class c, the share where c is predicted at all,
and of those where c is predicted, the share that hold it).

Variants: ``none`` (the recipe as is), ``copy_paste`` (+ COPY_PASTE),
``gan`` (+ ``data.extra_root`` = strips the setting's GAN generated),
``both``. Settings: ``full`` (every training strip of fold 0) and ``low``
(fold 0's training strips holding class 2 cut to ``--low-class2``, the others
removed from the data; the validation fold and the split are unchanged). Each
setting trains its own GAN (configs/gan_demo_cpu.yaml, classes 1 and 2, on
that setting's training strips only) and synthesises ``--gan-per-class``
strips once; every seed of the gan cells uses them.

Recipes (``--config``, configs/demo_cpu.yaml by default, then these flags):
``demo``, the default, is the config as ``make demo`` trains it (7 full epochs,
validation on all of fold 0), W&B off; ``reduced`` is a quick look: 4 epochs of
25 steps (800 crops of 256x128), validation on 40 strips of fold 0.
``--section.key=value`` arguments are added to every training, last.

Resumable: a cell with a result.json is skipped, a killed training continues
from its last.pt, prediction keeps the strips it finished, the GAN resumes
and a finished synthesis is kept. Results are written atomically; the report
(OUT/report.json, OUT/report.md) covers the cells done so far, so the study
can be stopped at any time and continued with the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import predict
import train
from core.checkpoint import load_checkpoint
from core.cli import parse_with_overrides
from core.files import atomic_write_text, claim_folder
from core.gan_config import load_gan_config
from core.precision import machine_summary
from datasets.severstal import list_images, read_mask_table, table_to_rles
from inference.scoring import score_csv
from training.gan import LAST, synthesize, train_gan

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"demo": ["--wandb.mode=disabled"],
           "reduced": ["--train.epochs=4", "--train.max_steps_per_epoch=25", "--train.val_every=4",
                       "--data.max_val_images=40", "--wandb.mode=disabled"]}
COPY_PASTE = ["--augment.copy_paste.p=0.5", "--augment.copy_paste.classes=[1,2]",
              "--augment.copy_paste.max_pastes=2", "--augment.copy_paste.blend=alpha"]
GAN_FLAGS = ["--train.classes=[1,2]", "--wandb.mode=disabled"]
VARIANTS = ("none", "copy_paste", "gan", "both")
SETTINGS = ("low", "full")
RARE = (1, 2)
RESULT = "result.json"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="study folder")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synthetic", help="training data (Severstal "
                        "layout with its split file folds_k5_s42.csv)")
    parser.add_argument("--heldout", type=Path, default=None, help="held-out folder with test_images/ and "
                        "test_truth.csv (default: --data)")
    parser.add_argument("--heldout-others", type=int, default=0, help="score the held-out strips holding class 1 "
                        "or 2 and only this many others (0 = every strip)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_cpu.yaml")
    parser.add_argument("--gan-config", type=Path, default=REPO / "configs" / "gan_demo_cpu.yaml")
    parser.add_argument("--gan-per-class", default="1:150,2:150", help="strips synthesised per class (default "
                        "1:150,2:150)")
    parser.add_argument("--gan-steps", type=int, default=0, help="GAN training steps (default: the GAN config's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--low-class2", type=int, default=5, help="class-2 training strips kept in the low setting")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo", help="demo (default): the config as "
                        "make demo trains it; reduced: 4 x 25 steps, 40 validation strips")
    args, overrides = parse_with_overrides(parser, argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.settings = [s for s in args.settings.split(",") if s.strip()]
    args.variants = [v for v in args.variants.split(",") if v.strip()]
    if bad := [s for s in args.settings if s not in SETTINGS] + [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"unknown settings or variants {bad}: settings {SETTINGS}, variants {VARIANTS}")
    args.heldout = args.heldout or args.data
    return args, overrides


def study_settings(args, overrides) -> dict:
    return {"data": str(args.data), "heldout": str(args.heldout), "heldout_others": args.heldout_others,
            "config": str(args.config),
            "gan_config": str(args.gan_config), "gan_per_class": args.gan_per_class, "gan_steps": args.gan_steps, "low_class2": args.low_class2,
            "recipe": args.recipe, "recipe_flags": RECIPES[args.recipe], "copy_paste": COPY_PASTE, "gan_flags": GAN_FLAGS, "overrides": list(overrides)}


def claim(out: Path, settings: dict) -> None:
    """Record the study's settings in ``out``, or check they are those recorded."""
    claim_folder(out, settings, "ablate_augment.py")


# ---------------------------------------------------------------- data of a setting


def setting_data(setting: str, args) -> tuple[Path, Path]:
    """(data root, split file) of ``setting``; the low one is written once."""
    split = args.data / "folds_k5_s42.csv"
    if not split.is_file():
        raise SystemExit(f"{split} not found: the study uses the data's 5-fold split (seed 42)")
    if setting == "full":
        return args.data, split
    root = args.out / "low" / "data"
    if (root / "train.csv").is_file():
        return root, root / "folds.csv"
    folds = pd.read_csv(split, dtype={"ImageId": str})
    table = read_mask_table(args.data / "train.csv")
    rles = table_to_rles(table)
    train_ids = sorted(folds.loc[folds["fold"] != 0, "ImageId"])
    class2 = [i for i in train_ids if 2 in rles.get(i, {})]
    keep = set(np.random.default_rng(0).permutation(class2)[: args.low_class2])
    dropped = set(class2) - keep
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    for name in list_images(args.data / "train_images"):
        link = root / "train_images" / name
        if name not in dropped and not link.exists():
            link.symlink_to((args.data / "train_images" / name).resolve())
    atomic_write_text(root / "folds.csv", folds[~folds["ImageId"].isin(dropped)].to_csv(index=False))
    kept_rows = table[~table["ImageId"].isin(dropped)][["ImageId", "ClassId", "EncodedPixels"]]
    atomic_write_text(root / "dropped.txt", "\n".join(sorted(dropped)) + "\n")
    atomic_write_text(root / "train.csv", kept_rows.to_csv(index=False))  # last: the folder is complete
    print(f"low setting: kept {len(keep)} of {len(class2)} class-2 training strips of fold 0 ({root})", flush=True)
    return root, root / "folds.csv"


def gan_strips(setting: str, root: Path, split: Path, args) -> Path:
    """The setting's GAN (trained on its training strips, resumable) and its synthesised strips."""
    base = args.out / setting
    synth = base / "synth"
    if (synth / "train.csv").is_file():
        return synth
    started = time.perf_counter()
    flags = [f"--data.root={root}", f"--data.split_file={split}", f"--output_dir={base / 'gan_model'}", *GAN_FLAGS]
    if args.gan_steps:
        flags.append(f"--train.steps={args.gan_steps}")
    cfg = load_gan_config(args.gan_config, flags)
    last = base / "gan_model" / LAST
    if last.is_file():
        cfg = load_gan_config(base=load_checkpoint(last)["config"], overrides=flags)
    train_gan(cfg, resume=True)
    synthesize(last, synth, parse_per_class(args.gan_per_class))
    print(f"{setting}: GAN and synthesis in {time.perf_counter() - started:.0f} s", flush=True)
    return synth


def parse_per_class(text: str) -> dict[int, int]:
    """"1:150,2:150" -> {1: 150, 2: 150}."""
    return {int(c): int(n) for c, n in (item.split(":") for item in text.split(",") if item.strip())}


# ---------------------------------------------------------------- one cell


def any_defect_rates(pred_csv: Path, truth_csv: Path, image_ids: list[str]) -> dict:
    """Per class: recall (share of the strips holding it where it is
    predicted at all), precision (share of those where it is predicted that
    hold it) and the counts."""
    pred, truth = table_to_rles(read_mask_table(pred_csv)), table_to_rles(read_mask_table(truth_csv))
    out = {}
    for c in (1, 2, 3, 4):
        has = {i for i in image_ids if c in truth.get(i, {})}
        said = {i for i in image_ids if c in pred.get(i, {})}
        out[str(c)] = {"recall": len(has & said) / len(has) if has else None,
                       "precision": len(has & said) / len(said) if said else None,
                       "truth": len(has), "predicted": len(said)}
    return out


def run_cell(setting: str, variant: str, seed: int, args, overrides) -> dict:
    root, split = setting_data(setting, args)
    cell = args.out / setting / variant / f"seed{seed}"
    flags = ["--config", str(args.config), *RECIPES[args.recipe], f"--data.root={root}", f"--data.split_file={split}",
             "--data.fold=0", f"--train.seed={seed}", f"--output_dir={cell / 'run'}"]
    if variant in ("copy_paste", "both"):
        flags += COPY_PASTE
    if variant in ("gan", "both"):
        flags.append(f"--data.extra_root={gan_strips(setting, root, split, args)}")
    started = time.perf_counter()
    train.main([*flags, *overrides, "--resume"])
    trained = time.perf_counter() - started
    pred = cell / "pred"
    images, truth, image_ids = heldout_set(args)
    predict.main(["--checkpoint", str(cell / "run" / "best.pt"), "--images", str(images), "--out", str(pred),
                  "--resume"])
    scored = score_csv(pred / "submission.csv", truth, image_ids)
    return {"setting": setting, "variant": variant, "seed": seed, "score": scored["score"],
            "per_class": dict(scored["per_class"]), "empty_baseline": scored["empty_baseline"],
            "any_defect": any_defect_rates(pred / "submission.csv", truth, image_ids),
            "n_heldout": scored["n_images"], "train_seconds": round(trained), "machine": machine_summary()}


# ---------------------------------------------------------------- report


def _stat(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def report_markdown(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "Held-out Kaggle score and per-class Dice, mean ± standard deviation over seeds (n = seeds done); "
             "any-defect recall / precision of the rare classes 1 and 2 on the held-out strips.", "",
             "| setting | variant | n | score | Dice 1 | Dice 2 | Dice 3 | Dice 4 | recall 1 | recall 2 | "
             "precision 1 | precision 2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for setting in SETTINGS:
        for variant in VARIANTS:
            rows = [r for r in results if r["setting"] == setting and r["variant"] == variant]
            if not rows:
                continue
            dice = [_stat([r["per_class"][str(c)] if str(c) in r["per_class"] else r["per_class"][c]
                           for r in rows]) for c in (1, 2, 3, 4)]
            recall = [_stat([r["any_defect"][str(c)]["recall"] for r in rows]) for c in RARE]
            precision = [_stat([r["any_defect"][str(c)]["precision"] for r in rows]) for c in RARE]
            lines.append(f"| {setting} | {variant} | {len(rows)} | {_stat([r['score'] for r in rows])} | "
                         + " | ".join(dice + recall + precision) + " |")
    if results:
        r = results[0]
        counts = ", ".join(f"class {c}: {r['any_defect'][str(c)]['truth']}" for c in (1, 2, 3, 4))
        lines += ["", f"Held-out: {r['n_heldout']} strips ({counts}); all-empty score {r['empty_baseline']:.4f}. "
                  f"{r['machine']}."]
    return "\n".join(lines) + "\n"


def cells(args) -> list[tuple[str, str, int]]:
    """Setting by setting, seed-major inside one, so that a study stopped
    early has every variant of the first setting's first seeds."""
    return [(s, v, seed) for s in args.settings for seed in args.seeds for v in args.variants]


def heldout_set(args) -> tuple[Path, Path, list[str]]:
    """(images folder, truth csv, image ids) scored: every strip of
    ``--heldout``, or with ``--heldout-others K`` the strips holding a rare
    class (1 or 2) and the first K others by name, linked into OUT/heldout."""
    images, truth = args.heldout / "test_images", args.heldout / "test_truth.csv"
    if not args.heldout_others:
        return images, truth, list_images(images)
    folder = args.out / "heldout"
    if (folder / "test_truth.csv").is_file():
        return folder / "test_images", folder / "test_truth.csv", list_images(folder / "test_images")
    table = read_mask_table(truth)
    rles = table_to_rles(table)
    names = list_images(images)
    rare = [i for i in names if set(rles.get(i, {})) & set(RARE)]
    chosen = sorted(rare + [i for i in names if i not in rare][: args.heldout_others])
    (folder / "test_images").mkdir(parents=True, exist_ok=True)
    for name in chosen:
        if not (folder / "test_images" / name).exists():
            (folder / "test_images" / name).symlink_to((images / name).resolve())
    rows = table[table["ImageId"].isin(chosen)][["ImageId", "ClassId", "EncodedPixels"]]
    atomic_write_text(folder / "test_truth.csv", rows.to_csv(index=False))
    return folder / "test_images", folder / "test_truth.csv", chosen


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = parse_args(argv)
    claim(args.out, study_settings(args, overrides))
    command = "python scripts/ablate_augment.py " + " ".join(argv)
    results = []
    for setting, variant, seed in cells(args):
        path = args.out / setting / variant / f"seed{seed}" / RESULT
        if path.is_file():
            result = json.loads(path.read_text())
            print(f"== {setting} / {variant} / seed {seed}: done before", flush=True)
        else:
            print(f"== {setting} / {variant} / seed {seed}", flush=True)
            result = run_cell(setting, variant, seed, args, overrides)
            atomic_write_text(path, json.dumps(result, indent=2) + "\n")
            print(f"-- score {result['score']:.4f}, per class {result['per_class']}, "
                  f"train {result['train_seconds']} s", flush=True)
        results.append(result)
        atomic_write_text(args.out / "report.json", json.dumps({"command": command, "cells": results}, indent=2))
        atomic_write_text(args.out / "report.md", report_markdown(results, command))
    print(report_markdown(results, command))
    return results


if __name__ == "__main__":
    main()
