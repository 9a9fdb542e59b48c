"""Grad-CAM of the classification head."""

import numpy as np
import pytest
import torch
from torch import nn

from core.config import load_config
from inference.gradcam import cam_panel, grad_cam
from models import build_model


class BrightSpotClassifier(nn.Module):
    """Features are the image itself; class c's logit is the mean of channel c:
    the evidence lies where the image is bright."""

    def encoder_features(self, images):
        return images

    def classify_features(self, features):
        return features.mean(dim=(2, 3))


def test_cam_peaks_on_the_evidence():
    images = torch.zeros(1, 3, 64, 96)
    images[0, :, 20:30, 50:70] = 1.0
    cams = grad_cam(BrightSpotClassifier(), images)
    assert cams.shape == (1, 3, 64, 96) and float(cams.min()) >= 0 and float(cams.max()) == pytest.approx(1.0)
    y, x = np.unravel_index(int(cams[0, 0].argmax()), (64, 96))
    assert 20 <= y < 30 and 50 <= x < 70
    assert float(cams[0, 0, :10, :40].max()) < 0.05


def test_cam_of_a_real_two_head_model_and_picture():
    cfg = load_config(None, ["--model.smp.encoder=resnet18", "--model.smp.classification_head=true", "--loss.cls=0.2"])
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 64, 128)
    cams = grad_cam(model, images)
    assert cams.shape == (2, 4, 64, 128) and torch.isfinite(cams).all()
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-6
    strip = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    panel = cam_panel(strip, cams[0].numpy(), np.array([0.9, 0.1, 0.5, 0.2]))
    assert panel.shape == (4 * 64, 128, 3) and panel.dtype == np.uint8
