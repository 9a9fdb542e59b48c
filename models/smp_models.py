"""Semantic segmentation with any segmentation_models_pytorch architecture.

``SegmentationModel`` wraps ``smp.create_model`` (Unet, FPN, UnetPlusPlus, ...
with any smp or timm encoder) behind the project's model contract: images in
[0, 1] in, a loss dict out in training, per-class probabilities out in eval.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Iterator

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.classes import NUM_CLASSES
from core.config import Config, ConfigError, SmpConfig

from .losses import SegLoss, build_seg_loss

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLS_HEAD_DROPOUT = 0.2  # smp's default; SmpConfig has no field for it


class SegmentationModel(nn.Module):
    """An smp network with ImageNet normalisation inside and losses attached.

    ``train()``: ``forward(images, targets) -> dict[str, Tensor]`` of float32
    scalar losses; ``targets["masks"]`` float [B, C, H, W] in {0, 1} and, with a
    classification head, ``targets["labels"]`` float [B, C] in {0, 1}. With
    ``distill_weight > 0``, ``targets["teacher_probs"]`` float [B, C, H, W] in
    [0, 1] adds ``loss_distill``, the weighted BCE of the mask logits against them.
    ``eval()``: ``forward(images) -> float32 [B, C, H, W]`` probabilities in [0, 1].
    ``images``: float32 [B, 3, H, W] in [0, 1], H and W divisible by 32.
    """

    target_kind = "semantic"

    def __init__(self, net: nn.Module, seg_loss: SegLoss, cls_weight: float = 0.0, distill_weight: float = 0.0):
        super().__init__()
        self.net = net
        self.seg_loss = seg_loss
        self.cls_weight = cls_weight
        self.distill_weight = distill_weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_classification_head(self) -> bool:
        return self.net.classification_head is not None

    def forward(self, images: Tensor, targets: dict[str, Tensor] | None = None) -> dict[str, Tensor] | Tensor:
        outputs = self.net(self._normalise(images))
        mask_logits, class_logits = outputs if self.has_classification_head else (outputs, None)
        if not self.training:
            return torch.sigmoid(mask_logits.float())
        if targets is None:
            raise ValueError("SegmentationModel in train mode needs targets; call model.eval() to predict")
        losses = self.seg_loss(mask_logits, targets["masks"])
        if self.distill_weight > 0:
            if "teacher_probs" not in targets:
                raise ValueError("loss.distill > 0 needs targets['teacher_probs'] (training.distill.Teacher adds them)")
            losses["loss_distill"] = self.distill_weight * _soft_bce(mask_logits, targets["teacher_probs"])
        if class_logits is not None:
            losses["loss_cls"] = self.cls_weight * _image_label_loss(class_logits, targets["labels"])
        return losses

    def probs_and_class_probs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Eval mode, one pass of the encoder: the mask probabilities (as
        ``forward``) and the image-level class probabilities (as ``class_probs``)."""
        if not self.has_classification_head:
            raise RuntimeError("this model was built without model.smp.classification_head")
        mask_logits, class_logits = self.net(self._normalise(images))
        return torch.sigmoid(mask_logits.float()), torch.sigmoid(class_logits.float())

    def class_probs(self, images: Tensor) -> Tensor:
        """Image-level class probabilities, float32 [B, C] in [0, 1]."""
        return torch.sigmoid(self.classify_features(self.encoder_features(images)).float())

    def encoder_features(self, images: Tensor) -> Tensor:
        """The encoder's deepest feature map [B, K, H/32, W/32], which the
        classification head reads (and Grad-CAM explains)."""
        if not self.has_classification_head:
            raise RuntimeError("this model was built without model.smp.classification_head")
        return self.net.encoder(self._normalise(images))[-1]

    def classify_features(self, features: Tensor) -> Tensor:
        """Class logits [B, C] from ``encoder_features``."""
        return self.net.classification_head(features)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's parameters, so the optimiser can give them their own learning rate."""
        return self.net.encoder.parameters()

    def _normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


# create_model arguments that model.smp.arch_kwargs may not set, and why
SET_BY_CONFIG = {"encoder_name": "set by model.smp.encoder", "encoder_weights": "set by model.smp.encoder_weights",
                 "in_channels": "always 3", "classes": "always 4, the Severstal classes",
                 "aux_params": "set by model.smp.classification_head and model.smp.cls_pooling",
                 "activation": "always none: the model applies its own sigmoid"}


def checked_arch_kwargs(m: SmpConfig) -> dict:
    """``model.smp.arch_kwargs`` checked against the smp architecture's named
    parameters (a misspelt one would otherwise vanish into ``**kwargs``);
    ``model.smp.arch`` and ``model.smp.encoder`` are checked on the way."""
    arch, encoder, kwargs = m.arch, m.encoder, m.arch_kwargs
    archs = smp.MODEL_ARCHITECTURES_MAPPING
    if arch.lower() not in archs:
        raise ConfigError(f"model.smp.arch={arch!r} is not an smp architecture; valid: "
                          f"{', '.join(a.__name__ for a in archs.values())}")
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            raise ConfigError(f"model.smp.encoder={encoder!r}: timm has no model {encoder[3:]!r} (timm.list_models())")
    elif encoder not in smp.encoders.get_encoder_names():
        close = difflib.get_close_matches(encoder, smp.encoders.get_encoder_names(), n=3)
        raise ConfigError(f"model.smp.encoder={encoder!r} is not an smp encoder"
                          + (f" (close: {', '.join(close)})" if close else "")
                          + "; a timm model is written tu-<name>, e.g. tu-convnext_tiny")
    cls = archs[arch.lower()]
    named = [n for n, p in inspect.signature(cls).parameters.items()
             if p.kind is not p.VAR_KEYWORD and n not in SET_BY_CONFIG]
    for name in kwargs:
        if name in SET_BY_CONFIG:
            raise ConfigError(f"model.smp.arch_kwargs.{name}: {SET_BY_CONFIG[name]}")
        if name not in named:
            raise ConfigError(f"model.smp.arch_kwargs.{name}: {cls.__name__} takes no such argument; "
                              f"it takes {', '.join(named)}")
    return kwargs


def _image_label_loss(class_logits: Tensor, labels: Tensor) -> Tensor:
    """BCE of image-level logits [B, C] against labels [B, C] in {0, 1}, in float32."""
    with torch.autocast(class_logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(class_logits.float(), labels.float())


def _soft_bce(logits: Tensor, probs: Tensor) -> Tensor:
    """BCE of logits [B, C, H, W] against soft targets in [0, 1] (a teacher's probabilities), in float32."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits.float(), probs.float())


def build_smp(cfg: Config) -> SegmentationModel:
    """The smp network named by ``cfg.model.smp.arch`` / ``cfg.model.smp.encoder``.

    Weights come only from ``cfg.model.smp.encoder_weights`` (None, the default,
    never downloads). A classification head needs ``cfg.loss.cls > 0``: an
    untrained gate is worse than none.
    """
    m = cfg.model.smp
    if m.classification_head and cfg.loss.cls <= 0:
        raise ConfigError("model.smp.classification_head needs loss.cls > 0 (the weight of its BCE)")
    aux_params = None
    if m.classification_head:
        aux_params = dict(classes=NUM_CLASSES, pooling=m.cls_pooling, dropout=CLS_HEAD_DROPOUT)
    kwargs = checked_arch_kwargs(m)
    try:
        net = smp.create_model(arch=m.arch, encoder_name=m.encoder, encoder_weights=m.encoder_weights,
                               in_channels=3, classes=NUM_CLASSES, aux_params=aux_params, **kwargs)
    except (TypeError, ValueError) as err:
        if not kwargs:
            raise
        raise ConfigError(f"model.smp.arch_kwargs={kwargs} for {m.arch}: {type(err).__name__}: {err}") from err
    return SegmentationModel(net, build_seg_loss(cfg.loss), cls_weight=cfg.loss.cls, distill_weight=cfg.loss.distill)
