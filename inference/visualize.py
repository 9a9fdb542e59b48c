"""Pictures people would rather look at than read: class outlines drawn on
strips, with a legend."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from core.classes import CLASS_NAMES
from core.files import atomic_path

# BGR colours per class 1..4, distinct on grey steel.
CLASS_COLORS = ((0, 0, 255), (0, 200, 255), (255, 128, 0), (255, 0, 255))


def draw_outlines(image: np.ndarray, masks: np.ndarray, thickness: int = 2, fill_alpha: float = 0.0) -> np.ndarray:
    """image: uint8 [H, W, 3] (BGR); masks: [4, H, W] (nonzero = class).
    Returns a copy with each class outlined (and optionally filled) in its colour."""
    out = image.copy()
    if fill_alpha > 0:
        tint = out.copy()
        for mask, color in zip(masks, CLASS_COLORS):
            tint[mask > 0] = color
        out = cv2.addWeighted(tint, fill_alpha, out, 1 - fill_alpha, 0)
    for mask, color in zip(masks, CLASS_COLORS):
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thickness)
    return out


def legend_bar(width: int, height: int = 22, title: str = "") -> np.ndarray:
    """uint8 [height, width, 3]: a title on the left, then a swatch and name per class."""
    bar = np.full((height, width, 3), 32, np.uint8)
    x = 6
    if title:
        cv2.putText(bar, title, (x, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        x += 9 * len(title) + 12
    for name, color in zip(CLASS_NAMES, CLASS_COLORS):
        cv2.rectangle(bar, (x, 5), (x + 14, height - 5), color, -1)
        cv2.putText(bar, name, (x + 20, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        x += 28 + 9 * len(name)
    return bar


def overlay_panel(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """A strip with its prediction (filled, outlined) above the same strip with
    the truth outlined, each under a legend bar. uint8 [*, W, 3]."""
    panels = [legend_bar(image.shape[1], title=f"{title} prediction".strip()),
              draw_outlines(image, pred, fill_alpha=0.3)]
    if truth is not None:
        panels += [legend_bar(image.shape[1], title="truth"), draw_outlines(image, truth)]
    return np.concatenate(panels, axis=0)


def maps_panel(maps: dict[str, np.ndarray]) -> np.ndarray:
    """Named maps (float [H, W] in [0, 1]) as heat maps, each under a bar with
    its name, stacked: uint8 [*, W, 3] BGR."""
    panels = []
    for name, values in maps.items():
        heat = cv2.applyColorMap(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        bar = np.full((22, heat.shape[1], 3), 32, np.uint8)
        cv2.putText(bar, name, (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        panels += [bar, heat]
    return np.concatenate(panels, axis=0)


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` (uint8 [H, W] or BGR [H, W, 3]) in the format of
    ``path``'s suffix (.png, .jpg) and write it atomically."""
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"cv2 cannot encode an image of shape {image.shape} as {path.suffix}: {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """float32 [3, H, W] RGB in [0, 1] -> uint8 [H, W, 3] BGR (for cv2)."""
    rgb = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return np.ascontiguousarray(rgb[..., ::-1])
