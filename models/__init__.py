"""Model builders behind one explicit registry, and the losses.

Every builder takes the resolved ``core.config.Config`` and returns an
``nn.Module`` that follows docs/CONTRACTS.md: ``target_kind`` names the dataset
it trains on; train mode returns a dict of losses, eval mode per-class
probabilities float32 [B, 4, H, W] in [0, 1].
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import Config, ConfigError, load_config, to_dict

from .autoencoder import build_autoencoder
from .classical import build_classical
from .maskrcnn import build_maskrcnn
from .smp_models import build_smp

MODELS = {"smp": build_smp, "maskrcnn": build_maskrcnn, "classical": build_classical,
          "autoencoder": build_autoencoder}


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
    _no_download(cfg)
    with torch.device("meta"):
        build_model(cfg)


def model_weights(ckpt: dict) -> dict:
    """The weights to predict or fine-tune with: the EMA's when the run kept one."""
    return ckpt.get("ema") or ckpt["model"]


def load_model(path, device="cpu") -> tuple[nn.Module, Config]:
    """An eval-mode model and its Config from a checkpoint (EMA weights when the
    run kept an EMA). See docs/CONTRACTS.md."""
    ckpt = load_checkpoint(path)
    cfg = load_config(base=ckpt["config"])
    _no_download(cfg)  # the trained weights replace any pretrained ones
    model = build_model(cfg)
    model.load_state_dict(model_weights(ckpt))
    return model.to(device).eval(), cfg


def save_random_checkpoint(cfg: Config, path, seed: int = 0):
    """A checkpoint of ``cfg``'s model with seeded random weights at ``path``
    (benchmarks time a model's shape, not its training); ``path``."""
    torch.manual_seed(seed)
    save_checkpoint({"model": build_model(cfg).state_dict(), "ema": None, "config": to_dict(cfg)}, path)
    return path


def _no_download(cfg: Config) -> None:
    """Pretrained weights off for every model kind: nothing is downloaded."""
    cfg.model.smp.encoder_weights = None
    cfg.model.maskrcnn.backbone_weights = None
