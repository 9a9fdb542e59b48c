"""Typed configuration of the mask-conditioned defect GAN (scripts/train_gan.py).

As core/config.py: the defaults live here, with comments; a YAML file holds
only what differs; ``--section.key=value`` overrides it; unknown keys and
wrong types fail naming the key. The data section is train.py's
(``DataConfig``): the GAN learns from the training strips of ``data.fold``
of the same split, never from its validation strips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import yaml

from .config import ConfigError, DataConfig, WandbConfig, fill_config, to_dict
from .files import atomic_write_text


@dataclass
class GanModelConfig:
    patch: int = 96  # square patches the GAN paints, a multiple of 8; a defect larger than that is cut to it
    base_channels: int = 16  # generator width at full resolution (x2, x4, x8 below it): a small U-Net
    disc_channels: int = 32  # PatchGAN discriminator width (x2, x4 below it)
    # standardised: the discriminator sees each patch minus the mean, over the standard deviation, of its
    # pixels outside the mask; raw: the [0, 1] pixels, on which it stayed at chance (EXPERIMENTS.md, entry 24)
    disc_input: Literal["standardised", "raw"] = "standardised"
    noise: bool = True  # a channel of Gaussian noise in the generator's input: varied textures per mask


@dataclass
class GanLossConfig:
    adversarial: Literal["hinge", "lsgan"] = "hinge"
    adv_weight: float = 1.0
    l1_outside: float = 10.0  # L1 to the input outside the mask: the background is kept
    l1_inside: float = 1.0  # L1 to the real defect inside the mask: a reconstruction anchor that makes
                            # minutes of CPU training enough; 0 = adversarial only inside


@dataclass
class GanTrainConfig:
    steps: int = 1500
    batch_size: int = 8
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam, as pix2pix
    classes: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # the classes it learns to paint
    min_area: int = 16  # smaller connected components are not used as shapes or real examples
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # as train.amp (core/precision.resolve_amp)
    seed: int = 0  # weights and every batch: the batch of step s is drawn from (seed, s)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50  # metrics.jsonl (and W&B) every N steps
    checkpoint_every: int = 250  # last.pt every N steps (and at the end)
    sample_every: int = 500  # a real-vs-generated grid every N steps (and at the end)


@dataclass
class GanConfig:
    output_dir: str = "runs/gan"
    data: DataConfig = field(default_factory=DataConfig)
    model: GanModelConfig = field(default_factory=GanModelConfig)
    loss: GanLossConfig = field(default_factory=GanLossConfig)
    train: GanTrainConfig = field(default_factory=GanTrainConfig)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="severstal-gan"))


def load_gan_config(path=None, overrides=(), base: dict | None = None) -> GanConfig:
    """Defaults, then ``base`` (a checkpoint's stored config), then the YAML
    at ``path``, then ``--section.key=value`` overrides; validated."""
    cfg = fill_config(GanConfig(), path, overrides, base)
    validate_gan(cfg)
    return cfg


def validate_gan(cfg: GanConfig) -> None:
    checks = [
        (cfg.model.patch >= 16 and cfg.model.patch % 8 == 0, "model.patch", "must be a multiple of 8, >= 16"),
        (cfg.model.base_channels >= 4, "model.base_channels", "must be >= 4"),
        (cfg.train.steps >= 1, "train.steps", "must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (bool(cfg.train.classes) and set(cfg.train.classes) <= {1, 2, 3, 4}, "train.classes",
         "must be a non-empty list of class ids 1..4"),
        (len(cfg.train.betas) == 2, "train.betas", "needs 2 values"),
        (min(cfg.train.log_every, cfg.train.checkpoint_every, cfg.train.sample_every) >= 1,
         "train.log_every/checkpoint_every/sample_every", "must be >= 1"),
        (0 <= cfg.data.fold < cfg.data.folds, "data.fold", f"must be in 0..{cfg.data.folds - 1}"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"'{key}' {why}")


def save_gan_config(cfg: GanConfig, path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
