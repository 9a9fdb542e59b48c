"""Segmentation losses and their weighted sum, as configured by ``LossConfig``.

Every term takes ``logits: float32 [B, C, H, W]`` (before the sigmoid) and
``masks: float32 [B, C, H, W]`` in {0, 1} and returns a scalar tensor. The sum
built by :func:`build_seg_loss` runs in float32 even under autocast: the sums
over 400k-pixel strips and the sort in Lovasz lose too much in bfloat16.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import ConfigError, LossConfig

SegLoss = Callable[[Tensor, Tensor], dict[str, Tensor]]


def bce_loss(logits: Tensor, masks: Tensor, pos_weight: list[float] | None = None) -> Tensor:
    """Mean binary cross-entropy over all pixels; ``pos_weight`` (one per class)
    scales the loss of positive pixels of that class."""
    weight = None
    if pos_weight is not None:
        weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device).view(-1, 1, 1)
    return F.binary_cross_entropy_with_logits(logits, masks, pos_weight=weight)


_DICE = smp.losses.DiceLoss(smp.losses.MULTILABEL_MODE, from_logits=True)


def dice_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """1 - soft Dice per class over the whole batch, averaged over classes; a
    class with no positive pixel in the batch adds 0 (smp's multilabel DiceLoss).

    Not the metric's per-(image, class) Dice: on an empty map that one is
    smooth / (sum of probabilities + smooth), which a probability of 1e-3 over
    a 256x256 crop (sum 65) already drives near 0, with a nearly flat
    gradient. Most maps of a crop are empty, so that loss hardly moves: in
    the 400-strip demo it went from 0.967 to 0.916 in 10 epochs, this one
    from 0.534 to 0.284. Empty maps are left to BCE; Dice sharpens the
    classes present.
    """
    return _DICE(logits, masks)


def focal_loss(logits: Tensor, masks: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean sigmoid focal loss: BCE scaled by (1 - p_t)^gamma (gamma 0 is BCE)."""
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    probs = torch.sigmoid(logits)
    p_true = probs * masks + (1 - probs) * (1 - masks)
    return ((1 - p_true) ** gamma * bce).mean()


def lovasz_hinge_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Lovasz hinge (Berman et al. 2018) per image and class, averaged.

    Each (image, class) map is flattened; hinge errors are sorted in decreasing
    order and weighted by the gradient of the Jaccard loss along that order.
    """
    scores, labels = logits.flatten(0, 1).flatten(1), masks.flatten(0, 1).flatten(1)  # [B*C, H*W]
    errors = 1 - scores * (2 * labels - 1)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    labels_sorted = labels.gather(1, order)
    return (F.relu(errors_sorted) * _jaccard_gradient(labels_sorted)).sum(dim=1).mean()


def _jaccard_gradient(labels_sorted: Tensor) -> Tensor:
    """Increments of the Jaccard loss as pixels in ``labels_sorted`` [N, P]
    (sorted by decreasing error) are predicted positive one after another."""
    positives = labels_sorted.sum(dim=1, keepdim=True)
    intersection = positives - labels_sorted.cumsum(dim=1)
    union = positives + (1 - labels_sorted).cumsum(dim=1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def build_seg_loss(cfg: LossConfig) -> SegLoss:
    """The weighted sum of the terms whose weight in ``cfg`` is not 0.

    Returns ``loss(logits [B, C, H, W], masks [B, C, H, W]) -> dict`` mapping
    ``"loss_bce"``, ``"loss_dice"``, ``"loss_focal"``, ``"loss_lovasz"`` (active
    terms only) to float32 scalars already multiplied by their weight, so the
    values sum to the total loss.
    """
    candidates = {
        "loss_bce": (cfg.bce, partial(bce_loss, pos_weight=cfg.pos_weight)),
        "loss_dice": (cfg.dice, dice_loss),
        "loss_focal": (cfg.focal, partial(focal_loss, gamma=cfg.focal_gamma)),
        "loss_lovasz": (cfg.lovasz, lovasz_hinge_loss),
    }
    terms = {name: term for name, term in candidates.items() if term[0] != 0}
    if not terms:
        raise ConfigError("every segmentation loss weight is 0: set one of loss.bce, loss.dice, loss.focal, loss.lovasz")

    def seg_loss(logits: Tensor, masks: Tensor) -> dict[str, Tensor]:
        with torch.autocast(logits.device.type, enabled=False):
            logits, masks = logits.float(), masks.float()
            return {name: weight * term(logits, masks) for name, (weight, term) in terms.items()}

    return seg_loss
