"""Instance segmentation with torchvision's Mask R-CNN, behind the model contract.

Training returns torchvision's five losses; eval turns the detections into the
same per-class probability maps the U-Net gives, so tiling, thresholds and the
metric are shared. Anchors are configurable for long thin scratches and small
pits, and the image transform keeps crops, tiles and strips at their native
resolution.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from core.classes import NUM_CLASSES
from core.config import Config, ConfigError, MaskRCNNConfig

FPN_LEVELS = 5  # feature maps '0'..'3' and 'pool' of every backbone below
MASK_HEAD_CHANNELS = 256  # torchvision's mask head width
FPN_CHANNELS = 256  # torchvision's FPN width
IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,  # torchvision's detection default
    "resnet50_v2": ResNet50_Weights.IMAGENET1K_V1,
}


class MaskRCNNModel(nn.Module):
    """torchvision Mask R-CNN with the project's input and output conventions.

    ``images``: float32 [B, 3, H, W] in [0, 1] (torchvision normalises inside).
    ``train()``: ``forward(images, targets) -> dict`` of the five torchvision
    losses, float32 scalars; ``targets`` is a list of detection dicts
    (``boxes`` float [N, 4] xyxy, ``labels`` int64 [N] in 1..C, ``masks`` uint8
    [N, H, W]; N may be 0); other keys are dropped.
    ``eval()``: ``forward(images) -> float32 [B, C, H, W]`` in [0, 1], see
    :func:`instances_to_probs`.
    """

    target_kind = "instance"

    def __init__(self, net: MaskRCNN, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor] | Tensor:
        if not self.training:
            detections = self.detect(images)
            height, width = images.shape[-2:]
            return torch.stack([instances_to_probs(d, height, width, self.num_classes) for d in detections])
        if targets is None:
            raise ValueError("MaskRCNNModel in train mode needs targets; call model.eval() to predict")
        losses = self.net(list(images), [_torchvision_target(t) for t in targets])
        return {name: loss.float() for name, loss in losses.items()}

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """torchvision's raw detections per image (``boxes``, ``labels``,
        ``scores``, ``masks`` float [N, 1, H, W]), for COCO evaluation."""
        return self.net(list(images))

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The ResNet body's parameters (not the FPN), for a separate encoder learning rate."""
        return self.net.backbone.body.parameters()


class NativeResolution(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, pad the batch to a
    multiple of 32, map detections back) without its resize. That resize
    scales the short side up to ``min_size``: with min_size 256 a 256x128
    training crop became 512x256, so the model trained at twice the scale it
    then saw in 256x256 tiles and whole strips. Defects are measured in
    pixels here; every image keeps its size, in training and in eval."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def _torchvision_target(target: dict) -> dict[str, Tensor]:
    """Only what torchvision's Mask R-CNN reads, in the dtypes it checks; empty boxes as [0, 4]."""
    return {
        "boxes": target["boxes"].float().reshape(-1, 4),
        "labels": target["labels"].long(),
        "masks": target["masks"].to(torch.uint8),
    }


def instances_to_probs(detections: dict[str, Tensor], height: int, width: int, num_classes: int = 4) -> Tensor:
    """Per-class probability maps from one image's detections.

    ``detections``: torchvision's eval output (``scores`` [N], ``labels`` int64
    [N] in 1..C, ``masks`` float [N, 1, H, W] in [0, 1]). Returns float32
    [C, H, W] in [0, 1]: at each pixel, the maximum over instances of that
    class of score x mask probability (0 where no instance of the class is).
    """
    masks = detections["masks"].float().reshape(-1, height * width)
    values = detections["scores"].float()[:, None] * masks
    index = (detections["labels"] - 1)[:, None].expand_as(values)
    probs = values.new_zeros(num_classes, height * width)
    probs.scatter_reduce_(0, index, values, reduce="amax")
    return probs.view(num_classes, height, width)


def strip_anchor_generator(m: MaskRCNNConfig) -> AnchorGenerator:
    """One anchor size per FPN level, every aspect ratio (height / width) at each."""
    if len(m.anchor_sizes) != FPN_LEVELS:
        raise ConfigError(f"model.maskrcnn.anchor_sizes needs {FPN_LEVELS} values, one per FPN level; got {m.anchor_sizes}")
    sizes = tuple((size,) for size in m.anchor_sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(m.aspect_ratios),) * FPN_LEVELS)


def _backbone_weights(m: MaskRCNNConfig):
    """ImageNet weights for ``m.backbone`` when ``m.backbone_weights == "imagenet"``, else None."""
    if m.backbone_weights not in (None, "imagenet"):
        raise ConfigError(f"model.maskrcnn.backbone_weights must be null or 'imagenet', got {m.backbone_weights!r}")
    return IMAGENET_WEIGHTS[m.backbone] if m.backbone_weights == "imagenet" else None


def _torchvision_maskrcnn(m: MaskRCNNConfig, **kwargs) -> MaskRCNN:
    """The Mask R-CNN named by ``m.backbone``; no pretrained detector, backbone
    weights only from ``m.backbone_weights``. As torchvision does, a backbone
    trained from scratch keeps all layers and BatchNorm trainable."""
    weights = _backbone_weights(m)
    trainable = m.trainable_backbone_layers if weights is not None else None
    if m.fpn_channels != FPN_CHANNELS and m.backbone == "resnet50_v2":
        raise ConfigError(f"model.maskrcnn.fpn_channels must be {FPN_CHANNELS} for resnet50_v2 (its heads are fixed); "
                          f"got {m.fpn_channels}")
    standard = m.fpn_channels == FPN_CHANNELS
    if m.backbone == "resnet50" and standard:
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=weights, trainable_backbone_layers=trainable, **kwargs)
    if m.backbone == "resnet50_v2":
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=weights, trainable_backbone_layers=trainable, **kwargs)
    backbone = resnet_fpn_backbone(  # resnet18, or resnet50 with a narrower FPN: the same body and heads
        backbone_name=m.backbone,
        weights=weights,
        norm_layer=FrozenBatchNorm2d if weights is not None else nn.BatchNorm2d,
        trainable_layers=5 if trainable is None else trainable,
    )
    if not standard:  # the FPN's 3x3 convs at stride 4, and the RPN's after them, cost more than a resnet18 body
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, m.fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = m.fpn_channels
    return MaskRCNN(backbone, **kwargs)


def build_maskrcnn(cfg: Config) -> MaskRCNNModel:
    """Mask R-CNN for the 4 defect classes (+ background), from ``cfg.model.maskrcnn``.

    Images are never rescaled (:class:`NativeResolution`): crops, tiles and
    whole 256x1600 strips are seen at the same scale.
    """
    m = cfg.model.maskrcnn
    if m.backbone not in IMAGENET_WEIGHTS:
        raise ConfigError(f"unknown model.maskrcnn.backbone {m.backbone!r}; valid: {sorted(IMAGENET_WEIGHTS)}")
    net = _torchvision_maskrcnn(
        m,
        num_classes=NUM_CLASSES + 1,
        box_detections_per_img=m.detections_per_image,
        box_score_thresh=m.score_threshold,
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
        box_batch_size_per_image=m.box_batch_size_per_image,
    )
    t = net.transform  # min_size / max_size are only read by the resize NativeResolution drops
    net.transform = NativeResolution(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size)
    anchors = strip_anchor_generator(m)
    net.rpn.anchor_generator = anchors
    # Same conv depth as the builder chose (2 for v2), but one output per anchor of ours.
    conv_depth = len(net.rpn.head.conv)
    net.rpn.head = RPNHead(net.backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=conv_depth)
    if m.mask_head_channels != MASK_HEAD_CHANNELS:
        # A narrower mask head: its four 3x3 convs on every positive RoI dominate a CPU step.
        norm = nn.BatchNorm2d if m.backbone == "resnet50_v2" else None
        width = m.mask_head_channels
        net.roi_heads.mask_head = MaskRCNNHeads(net.backbone.out_channels, [width] * 4, 1, norm_layer=norm)
        net.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, NUM_CLASSES + 1)
    return MaskRCNNModel(net, NUM_CLASSES)
