"""Train a segmentation model on data in the Severstal layout.

    python train.py --config configs/unet_resnet34.yaml [--section.key=value ...] [--resume]
    torchrun --nproc_per_node=N train.py --config ...      # the same, on N processes

``--section.key=value`` arguments are exactly what a W&B sweep agent's
``${args}`` passes. ``--resume`` continues from ``output_dir/last.pt`` (the
checkpoint's stored config is used, with command-line overrides on top) and
ends where an uninterrupted run ends; with no last.pt it starts afresh.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from core.checkpoint import load_checkpoint
from core.cli import parse_with_overrides
from core.config import Config, ConfigError, load_config, save_config, to_dict
from core.distributed import barrier, broadcast_object, cleanup, init_distributed
from core.precision import Precision, resolve_amp
from models import build_model, check_model_config, model_weights
from training.data import build_train_dataset, build_val_dataset, load_run_data
from training.logger import RunLogger
from training.trainer import Trainer
from workflows.classical_search import fit_classical
from workflows.hparam_sweep import sweep_output_dir


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file; holds only what differs from core/config.py")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt if it exists")
    return parse_with_overrides(parser, argv)


@contextmanager
def config_errors():
    """A bad key or value ends the run with one line naming it, not a traceback."""
    try:
        yield
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None


def resolve_config(args, overrides) -> tuple[Config, Path | None, str | None]:
    """The config, the checkpoint to resume from (or None) and its W&B run id."""
    cfg = load_config(args.config, overrides)
    cfg.output_dir = sweep_output_dir(cfg.output_dir)  # a folder per run under a W&B sweep agent
    last = Path(cfg.output_dir) / "last.pt"
    if args.resume and last.exists():
        ckpt = load_checkpoint(last)
        cfg = load_config(base=ckpt["config"], overrides=[*overrides, f"--output_dir={cfg.output_dir}"])
        return cfg, last, ckpt["wandb_id"]
    if last.exists():
        raise SystemExit(f"{cfg.output_dir} already holds a run (last.pt): pass --resume to continue it, "
                         "or choose another --output_dir=...")
    return cfg, None, None


def init_weights(model, path, verbose: bool) -> None:
    """Load a checkpoint's weights (EMA ones when kept) before training: a new
    run, with a fresh optimiser and schedule, that starts where another ended."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(model_weights(ckpt))
    if verbose:
        print(f"initialised weights from {path} (epoch {ckpt['epoch']}, score {ckpt['best_score']:.4f})")


def describe_model(cfg: Config) -> str:
    if cfg.model.name == "maskrcnn":
        return f"maskrcnn ({cfg.model.maskrcnn.backbone}-FPN)"
    if cfg.model.name != "smp":
        return cfg.model.name
    return f"smp {cfg.model.smp.arch}/{cfg.model.smp.encoder}"


def fit_by_search(cfg: Config, data, model, precision: Precision, resume_from, is_main: bool) -> dict:
    """Fit a model whose parameters are searched (``fitted_by_search``) on rank 0;
    with --resume on a finished run, nothing is redone."""
    if not is_main:
        return {}
    if resume_from:
        print(f"{cfg.output_dir} is already fitted ({resume_from}); nothing to resume")
        return {"best_score": load_checkpoint(resume_from)["best_score"]}
    return fit_classical(cfg, data, model, precision)


def main(argv=None) -> dict:
    started = time.perf_counter()
    args, overrides = parse_args(argv)
    with config_errors():
        cfg, resume_from, resume_id = resolve_config(args, overrides)
        check_model_config(cfg)  # before any file is written
    dist_info = init_distributed(cfg.train.device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    logger = RunLogger(cfg, dist_info.is_main, resume_id)
    with config_errors():
        if logger.sweep_overrides(cfg):
            check_model_config(cfg)  # the model the sweep's values make
    precision = None
    if dist_info.is_main:
        precision = resolve_amp(cfg.train.amp, dist_info.device, key="train.amp")
        cfg.train.amp = precision.amp  # config.yaml, the checkpoints and W&B record what ran
        logger.update_config({**to_dict(cfg), "precision": precision.to_dict()})
        print(f"train.amp: {precision.describe()}", flush=True)
    cfg = load_config(base=broadcast_object(to_dict(cfg)))  # every rank runs rank 0's config
    precision = Precision(**broadcast_object(precision.to_dict() if precision else None))
    if dist_info.is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
        data = load_run_data(cfg, verbose=True)  # rank 0 writes the split file first
    barrier()
    if not dist_info.is_main:
        data = load_run_data(cfg)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    if cfg.model.init_checkpoint and not resume_from:
        init_weights(model, cfg.model.init_checkpoint, verbose=dist_info.is_main)
    if getattr(model, "fitted_by_search", False):  # the classical pipeline: a parameter search, not the loop
        record = fit_by_search(cfg, data, model, precision, resume_from, dist_info.is_main)
        logger.finish({"best_score": record.get("best_score")})
        cleanup()
        return record
    train_set = build_train_dataset(cfg, data, model.target_kind)
    val_set = build_val_dataset(data)
    if dist_info.is_main:
        print(f"{describe_model(cfg)} on {dist_info.world_size} x {dist_info.device}, "
              f"{len(train_set)} train / {len(val_set)} val images, split {data.split_file}")
    trainer = Trainer(cfg, dist_info, model, train_set, val_set, logger, precision)
    if resume_from:
        trainer.resume(resume_from)
        logger.truncate_after(trainer.epoch)
        if dist_info.is_main:
            print(f"resumed from {resume_from} at epoch {trainer.epoch}, step {trainer.step}")
    record = trainer.fit()
    logger.finish({"best_score": trainer.best_score})
    if dist_info.is_main:
        minutes, seconds = divmod(round(time.perf_counter() - started), 60)
        print(f"finished in {minutes} min {seconds} s: best score {trainer.best_score:.4f}, "
              f"{Path(cfg.output_dir) / 'best.pt'}")
    cleanup()
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
