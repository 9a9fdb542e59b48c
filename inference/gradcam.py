"""Grad-CAM of the image-level classifier: where on the strip the evidence for
each class lies, for inspectors who want to see why a strip was flagged.

Works with any model that exposes ``encoder_features(images)`` and
``classify_features(features)`` (a segmentation model built with
``model.smp.classification_head``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.classes import CLASS_NAMES


def grad_cam(model, images: torch.Tensor) -> torch.Tensor:
    """images: float32 [B, 3, H, W] in [0, 1]. Returns float32 [B, C, H, W] in
    [0, 1]: per class, ReLU of the feature maps weighted by the spatial mean of
    the class logit's gradient, upsampled and scaled to its maximum."""
    with torch.enable_grad():
        features = model.encoder_features(images).detach().float().requires_grad_(True)
        logits = model.classify_features(features)
        maps = []
        for c in range(logits.shape[1]):
            (grads,) = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=c + 1 < logits.shape[1])
            weights = grads.mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * features).sum(1, keepdim=True)))
    cams = F.interpolate(torch.cat(maps, 1), size=images.shape[-2:], mode="bilinear", align_corners=False)
    peak = cams.flatten(2).amax(-1)[..., None, None]
    return (cams / peak.clamp_min(1e-12)).detach()


def cam_panel(image: np.ndarray, cams: np.ndarray, class_probs: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """image uint8 [H, W, 3] (BGR), cams float [C, H, W] in [0, 1], class_probs
    [C]. One heat-map row per class, each titled with the class probability."""
    rows = []
    for name, cam, prob in zip(CLASS_NAMES, cams, class_probs):
        heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        row = cv2.addWeighted(heat, alpha, image, 1 - alpha, 0)
        cv2.putText(row, f"class {name}: p={prob:.2f}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2,
                    cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)
