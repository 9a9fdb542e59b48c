"""Knowledge distillation: a teacher's per-pixel probabilities as extra targets.

``Teacher`` holds eval-mode models from ``model.teacher_checkpoint`` (one or
more, averaged as probabilities, as predict.py averages them) and adds
``targets["teacher_probs"]`` float32 [B, 4, H, W] in [0, 1] to each training
batch, computed on the very crops the student sees after augmentation,
without gradients and under the loop's autocast (``core.precision``: bf16
where the device computes it natively, float32 elsewhere). The student's
``loss_distill`` (models/smp_models.py) reads them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from core.config import Config
from core.precision import Precision
from models import load_model


class Teacher:
    def __init__(self, models: Sequence[nn.Module], precision: Precision):
        self.models = [m.eval().requires_grad_(False) for m in models]
        self.precision = precision

    @classmethod
    def from_config(cls, cfg: Config, device, precision: Precision) -> "Teacher | None":
        """The teacher of ``cfg.model.teacher_checkpoint`` on ``device``, or None without one."""
        if not cfg.model.teacher_checkpoint:
            return None
        return cls([load_model(path, device)[0] for path in cfg.model.teacher_checkpoint], precision)

    @torch.inference_mode()
    def probs(self, images: Tensor) -> Tensor:
        """images: float32 [B, 3, H, W] in [0, 1] -> float32 [B, 4, H, W] in [0, 1], the models' mean."""
        with self.precision.autocast():
            return sum(m(images).float() for m in self.models) / len(self.models)

    def label(self, images: Tensor, targets: dict) -> dict:
        """``targets`` with ``teacher_probs`` for ``images`` (a plain tensor, usable by autograd's graph)."""
        return {**targets, "teacher_probs": self.probs(images).clone()}
