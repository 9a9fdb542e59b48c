"""Model builders behind one explicit registry, and the losses.

Every builder takes the resolved ``engine.config.Config`` and returns an
``nn.Module`` that follows docs/CONTRACTS.md: ``target_kind`` names the dataset
it trains on; train mode returns a dict of losses, eval mode per-class
probabilities float32 [B, 4, H, W] in [0, 1].
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.config import Config, ConfigError
from models.maskrcnn import build_maskrcnn
from models.unet import build_unet

MODELS = {"unet": build_unet, "maskrcnn": build_maskrcnn}


def build_model(cfg: Config) -> nn.Module:
    """The model registered under ``cfg.model.name``."""
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; valid: {', '.join(MODELS)}")
    return MODELS[cfg.model.name](cfg)


def check_model_config(cfg: Config) -> None:
    """Raise the ConfigError ``build_model`` would, at once: the model is
    built on the meta device with encoder weights off, so nothing is
    allocated or downloaded."""
    cfg = copy.deepcopy(cfg)
    cfg.model.encoder_weights = None
    with torch.device("meta"):
        build_model(cfg)
