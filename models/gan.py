"""A small mask-conditioned GAN that paints a defect of a given class into a
defect-free grey patch (pix2pix-style conditioning by concatenation).

Generator input, per patch: the grey image with the mask's pixels replaced
by the mean of the others ("erased"), the mask, the class one-hot times the
mask (a semantic map, as SPADE's input), and optionally a noise channel. It
outputs the whole patch: ``erased + tanh(residual)``, clamped to [0, 1]; the
last convolution starts at zero, so an untrained generator returns its
input outside the mask exactly. The discriminator is a PatchGAN
(GroupNorm; spectral norm instead on request) that sees the patch with the
mask and the class map. The adversarial losses count only the logit cells
that hold mask pixels: outside the mask a real and a generated patch are the
same by design, and averaging over those cells left the discriminator's
hinge loss at 2.0 (no signal) for 300 steps.

The discriminator sees each patch standardised by the mean and standard
deviation of its pixels outside the mask (``standardise``). On raw [0, 1]
pixels it stayed at chance for 3000 steps (docs/EXPERIMENTS.md, entry 24):
a defect is a few hundredths of grey level, while the patches differ by
their strip's brightness, which does not tell real from generated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 4


def erase(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W]: ``image`` with the pixels under ``mask`` (same shape, 0/1)
    set to the mean of the unmasked ones of that patch."""
    keep = 1 - mask
    fill = (image * keep).sum((1, 2, 3), keepdim=True) / keep.sum((1, 2, 3), keepdim=True).clamp(min=1)
    return image * keep + fill * mask


def standardise(image: torch.Tensor, mask: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """[N, 1, H, W]: ``image`` minus the mean of its pixels outside ``mask``,
    divided by their standard deviation (at least ``eps``), per patch. A patch
    that is all mask is only centred on its own mean."""
    keep = 1 - mask
    keep = torch.where(keep.sum((1, 2, 3), keepdim=True) < 1, torch.ones_like(keep), keep)  # all mask: every pixel
    count = keep.sum((1, 2, 3), keepdim=True)
    mean = (image * keep).sum((1, 2, 3), keepdim=True) / count
    std = (((image - mean) ** 2 * keep).sum((1, 2, 3), keepdim=True) / count).sqrt()
    return (image - mean) / std.clamp(min=eps)


def class_map(mask: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """[N, 4, H, W]: the one-hot of ``class_ids`` (int [N], 1..4) times ``mask``."""
    onehot = F.one_hot(class_ids.long() - 1, NUM_CLASSES).to(mask.dtype)
    return onehot[:, :, None, None] * mask


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=1), nn.GroupNorm(min(4, cout), cout),
                         nn.LeakyReLU(0.2, inplace=True))


class DefectGenerator(nn.Module):
    """A 4-level U-Net. ``forward(image, mask, class_ids, noise=None)``:
    image and mask float [N, 1, H, W] (H, W multiples of 8), image in [0, 1];
    returns float [N, 1, H, W] in [0, 1]."""

    def __init__(self, base: int = 16, noise: bool = True):
        super().__init__()
        self.noise = noise
        cin = 2 + NUM_CLASSES + int(noise)
        b = base
        self.enc1, self.enc2 = _block(cin, b), _block(b, 2 * b, 2)
        self.enc3, self.enc4 = _block(2 * b, 4 * b, 2), _block(4 * b, 8 * b, 2)
        self.mid = _block(8 * b, 8 * b)
        self.dec3, self.dec2, self.dec1 = _block(12 * b, 4 * b), _block(6 * b, 2 * b), _block(3 * b, b)
        self.out = nn.Conv2d(b, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, class_ids: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        erased = erase(image, mask)
        parts = [erased, mask, class_map(mask, class_ids)]
        if self.noise:
            parts.append(torch.zeros_like(mask) if noise is None else noise * mask)
        e1 = self.enc1(torch.cat(parts, 1))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        m = self.mid(self.enc4(e3))
        d3 = self.dec3(torch.cat([_up(m, e3), e3], 1))
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], 1))
        d1 = self.dec1(torch.cat([_up(d2, e1), e1], 1))
        return (erased + torch.tanh(self.out(d1).float())).clamp(0.0, 1.0)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class PatchDiscriminator(nn.Module):
    """``forward(image, mask, class_ids)`` -> logits [N, 1, H/8, W/8], one per overlapping patch.
    ``input`` standardised (the default: ``standardise``) or raw, the [0, 1]
    pixels as they are (how entries 13-24 of docs/EXPERIMENTS.md trained)."""

    def __init__(self, base: int = 32, spectral_norm: bool = False, input: str = "standardised"):
        super().__init__()
        if input not in ("standardised", "raw"):
            raise ValueError(f"discriminator input must be 'standardised' or 'raw', got {input!r}")
        self.standardised = input == "standardised"
        sn = nn.utils.spectral_norm if spectral_norm else (lambda layer: layer)
        cin = 2 + NUM_CLASSES
        self.net = nn.Sequential(
            sn(nn.Conv2d(cin, base, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(base, 2 * base, 4, 2, 1)), _norm(2 * base, spectral_norm), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(2 * base, 4 * base, 4, 2, 1)), _norm(4 * base, spectral_norm), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(4 * base, 1, 3, 1, 1)),
        )

    def forward(self, image: torch.Tensor, mask: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        if self.standardised:
            image = standardise(image.float(), mask.float()).to(image.dtype)
        return self.net(torch.cat([image, mask, class_map(mask, class_ids)], 1)).float()


def _norm(channels: int, spectral_norm: bool) -> nn.Module:
    """pix2pix's normalisation between the discriminator's convolutions; none under spectral norm."""
    return nn.Identity() if spectral_norm else nn.GroupNorm(min(4, channels), channels)


def logit_weights(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[N, 1, h, w]: 1 where a discriminator logit's cell holds a mask pixel.
    Outside the mask real and generated patches are alike by design, so the
    adversarial losses count only these cells (else the defect's few cells
    drown in the background's)."""
    return F.adaptive_max_pool2d(mask.float(), logits.shape[-2:])


def _mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp(min=1)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str, weight: torch.Tensor) -> torch.Tensor:
    """``kind`` hinge or lsgan, on the logits of real and generated patches, over the cells of ``weight``."""
    if kind == "hinge":
        return _mean(F.relu(1 - real), weight) + _mean(F.relu(1 + fake), weight)
    return 0.5 * (_mean((real - 1) ** 2, weight) + _mean(fake ** 2, weight))


def generator_adv_loss(fake: torch.Tensor, kind: str, weight: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return -_mean(fake, weight)
    return 0.5 * _mean((fake - 1) ** 2, weight)


def masked_l1(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the pixels where ``weight`` is 1."""
    return ((a - b).abs() * weight).sum() / weight.sum().clamp(min=1)
