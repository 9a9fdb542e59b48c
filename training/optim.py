"""Optimisers, learning-rate schedules and the EMA of weights."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.config import OptimConfig

OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "radam": torch.optim.RAdam}


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Encoder and decoder parameter groups when the model tells them apart
    (``encoder_parameters()``), so the encoder can take its own learning rate."""
    if cfg.encoder_lr is None or not hasattr(model, "encoder_parameters"):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr, "name": "all"}]
    encoder = [p for p in model.encoder_parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    return [{"params": encoder, "lr": cfg.encoder_lr, "name": "encoder"},
            {"params": rest, "lr": cfg.lr, "name": "decoder"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return OPTIMIZERS[cfg.name](groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int):
    """Returns (scheduler, when) with ``when`` = "step" (after every optimiser
    step), "epoch" or "metric" (ReduceLROnPlateau on the validation score)."""
    total = max(1, steps_per_epoch * epochs)
    if cfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total), "step"
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience), "metric"
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "step"
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr_ratio

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup), "step"


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (buffers too), or None."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
