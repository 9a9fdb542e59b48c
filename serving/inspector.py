"""One strip in, a verdict out: the models, tiler and post-processing of
predict.py behind the service.

``Inspector.inspect_batch`` takes decoded images of any sizes, runs the
same ``Predictor.predict_probs`` as predict.py on each group of one size,
applies the same ``PostProcess`` and encodes each class mask with the same
``rle_encode``: for one image per call, the RLE strings are predict.py's.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from core.classes import CLASS_IDS
from datasets.io import to_tensor
from datasets.rle import rle_encode
from inference.postprocess import PostProcess
from inference.predictor import Predictor
from inference.visualize import overlay_panel


@dataclass
class Request:
    """A decoded strip: RGB uint8 [H, W, 3], its name, and whether to draw an overlay."""

    image: np.ndarray
    name: str | None = None
    overlay: bool = False


@dataclass
class Inspector:
    predictor: Predictor
    postprocess: PostProcess
    checkpoints: Sequence[str] = ()
    postprocess_origin: str = ""
    sha256: str = field(init=False, default="")

    def __post_init__(self):
        self.sha256 = checkpoints_sha256(self.checkpoints)

    def inspect_batch(self, requests: Sequence[Request]) -> list[dict]:
        """One answer per request, in order (see ``answer``). Images of one
        size go through the predictor together."""
        answers: list[dict | None] = [None] * len(requests)
        by_shape: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            by_shape.setdefault(request.image.shape, []).append(i)
        for indices in by_shape.values():
            images = torch.stack([to_tensor(requests[i].image) for i in indices])
            probs, class_probs = self.predictor.predict_probs(images)
            for k, i in enumerate(indices):
                answers[i] = self.answer(requests[i], probs[k], None if class_probs is None else class_probs[k])
        return answers

    def answer(self, request: Request, probs: torch.Tensor, class_probs: torch.Tensor | None) -> dict:
        """probs: float32 [4, H, W] in [0, 1]; class_probs: float32 [4] or None.
        ``classes`` holds, per class 1..4, whether its post-processed mask is
        non-empty, its area in pixels, the image-level probability (the max
        pixel probability for a model without a classification head) and its
        Kaggle RLE; ``verdict`` is "fail" when any class is present."""
        masks = self.postprocess(probs, class_probs)
        level = class_probs if class_probs is not None else probs.flatten(1).amax(1)
        classes = [{"class_id": class_id, "present": bool(mask.any()), "area": int(mask.sum()),
                    "probability": round(float(p), 6), "rle": rle_encode(mask)}
                   for class_id, mask, p in zip(CLASS_IDS, masks, level)]
        answer = {"image": request.name, "height": int(masks.shape[1]), "width": int(masks.shape[2]),
                  "verdict": "fail" if any(c["present"] for c in classes) else "pass", "classes": classes,
                  "model": {"checkpoints": [str(c) for c in self.checkpoints], "sha256": self.sha256}}
        if request.overlay:
            answer["overlay_png"] = overlay_png(request.image, masks)
        return answer

    def warm_up(self, height: int = 256, width: int = 1600) -> None:
        """One forward pass on a blank strip, so the first request is not the slow one."""
        self.inspect_batch([Request(np.zeros((height, width, 3), np.uint8))])


def overlay_png(image: np.ndarray, masks: np.ndarray) -> str:
    """Base64 PNG of the class outlines on ``image`` (RGB uint8 [H, W, 3])."""
    panel = overlay_panel(np.ascontiguousarray(image[..., ::-1]), masks)
    ok, data = cv2.imencode(".png", panel)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode the overlay")
    return base64.b64encode(data.tobytes()).decode("ascii")


def checkpoints_sha256(paths: Sequence) -> str:
    """One SHA-256 over the bytes of every checkpoint, in order: which weights answered."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
