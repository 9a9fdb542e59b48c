"""A convolutional autoencoder anomaly detector (``model.name: autoencoder``).

It learns to reconstruct defect-free steel only (``target_kind =
"defect_free"``: the training fold's strips without any mask), so it needs
no defect labels; a defect is what it cannot reconstruct. The anomaly map is
the per-pixel absolute reconstruction error, smoothed by a Gaussian of
``error_sigma`` px and mapped to [0, 1] by 1 - exp(-error / error_scale).

- Train mode: ``model(images, targets) -> {"loss_l1", "loss_l2", "loss_ssim"}``
  (the active ones, each times its weight; float32, computed with autocast
  off); ``targets`` are ignored.
- Eval mode: ``model(images) -> float32 [B, 4, H, W]``: the anomaly map in
  every class channel (it does not tell classes apart), so tiling, the
  validation score and post-processing apply as to any model. H and W must
  be multiples of 2 ** len(channels) (tiles of 256 and 1600x256 strips are).
- ``anomaly_map = True`` tells predict.py to write the map as a 16-bit PNG
  and the image-level anomaly score per strip, ``image_score(map, grey)``
  (``model.autoencoder.image_score``: by default the mean of the 500 highest
  values on the steel, about 30 px in from the off-strip frame, whose edge is the
  largest error on good strips).

The network sees the grey strip (the mean of the three channels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.classes import NUM_CLASSES
from core.config import AutoencoderConfig, Config

from .anomaly_score import image_score

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # for intensities in [0, 1]


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """float32 [1, 1, size, size], summing to 1; size defaults to 2 * ceil(3 sigma) + 1."""
    size = size or 2 * math.ceil(3 * sigma) + 1
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """x [B, 1, H, W] convolved with ``kernel`` [1, 1, k, k], reflection-padded (same size)."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), kernel.to(x))


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of x and y (float [B, 1, H, W] in [0, 1]) with an 11 px Gaussian window."""
    k = gaussian_kernel(SSIM_SIGMA, SSIM_WINDOW)
    mx, my = blur(x, k), blur(y, k)
    vx, vy, cxy = blur(x * x, k) - mx**2, blur(y * y, k) - my**2, blur(x * y, k) - mx * my
    return ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2))


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class ConvAutoencoder(nn.Module):
    """See the module docstring. ``cfg``: model.autoencoder."""

    target_kind = "defect_free"
    anomaly_map = True
    has_classification_head = False

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        chans = list(cfg.channels)
        down, c_in = [], 1
        for c in chans:
            down += [_stage(c_in, c, 2), _stage(c, c, 1)]
            c_in = c
        self.encoder = nn.Sequential(*down, nn.Conv2d(c_in, cfg.latent_channels, 1))
        up, c_in = [], cfg.latent_channels
        for c in reversed(chans):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _stage(c_in, c, 1), _stage(c, c, 1)]
            c_in = c
        self.decoder = nn.Sequential(*up, nn.Conv2d(c_in, 1, 3, 1, 1), nn.Sigmoid())
        self.register_buffer("error_kernel", gaussian_kernel(cfg.error_sigma), persistent=False)

    def image_score(self, anomaly: np.ndarray, grey: np.ndarray) -> float:
        """A strip's anomaly score from its map (float [H, W]) and grey image (0..255)."""
        c = self.cfg
        return image_score(anomaly, grey, c.image_score, margin=c.score_margin, k=c.score_k)

    def reconstruct(self, grey: torch.Tensor) -> torch.Tensor:
        """grey float [B, 1, H, W] in [0, 1] -> its reconstruction, float32, same shape."""
        return self.decoder(self.encoder(grey)).float()

    def forward(self, images: torch.Tensor, targets=None):
        grey = images.float().mean(1, keepdim=True)
        recon = self.reconstruct(grey)
        with torch.autocast(images.device.type, enabled=False):
            if self.training:
                return self.losses(grey, recon)
            return self.anomaly(grey, recon).expand(-1, NUM_CLASSES, -1, -1).contiguous()

    def losses(self, grey: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"loss_l1": (self.cfg.l1, lambda: (recon - grey).abs().mean()),
                 "loss_l2": (self.cfg.l2, lambda: ((recon - grey) ** 2).mean()),
                 "loss_ssim": (self.cfg.ssim, lambda: 1 - ssim_map(recon, grey).mean())}
        return {name: weight * term() for name, (weight, term) in terms.items() if weight > 0}

    def anomaly(self, grey: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """float32 [B, 1, H, W] in [0, 1]: the smoothed absolute error, squashed."""
        error = blur((recon - grey).abs(), self.error_kernel)
        return 1 - torch.exp(-error / self.cfg.error_scale)


def build_autoencoder(cfg: Config) -> ConvAutoencoder:
    return ConvAutoencoder(cfg.model.autoencoder)
