"""A classical image-processing baseline as a registered model (``model.name: classical``).

Per strip (grey levels 0..255, the mean of the three channels):

1. the frame outside the strip (near-black) is filled with the strip's median
   grey plus noise as fine as the strip's, so no filter sees its edge and the
   noise levels stay the strip's, and every score there is 0;
2. illumination is flattened per class by subtracting a Gaussian background
   (``<class>_bg`` px), and the result is divided by a robust noise level
   (1.4826 x the median absolute deviation), so responses are in noise units;
3. each class has its own detector:
   - 1 pits: black-hat + top-hat with a disc (dark and bright marks smaller
     than the disc) above ``pits_level`` noise units; the response is the
     percentage of such pixels within ``pits_spread`` px, so a cluster of pits
     becomes one region and an isolated speck stays weak;
   - 2 scratches across: a thin-mark response (hats with a horizontal line of
     ``cross_width``) opened with a vertical line of ``cross_length`` (only
     marks long across the strip survive), dilated sideways;
   - 3 marks along: the same turned 90 degrees (thin scratches along the
     strip), or a soft band: the flattened strip smoothed along x and opened
     along x like the scratches, whichever is stronger;
   - 4 blotches: the darkness of the strip against a wide background,
     smoothed over ``blotch_smooth``;
4. a response r becomes a score sigmoid(2 (r - threshold)) in [0, 1], so a
   score of 0.5 is the fitted threshold and predict.py's post-processing
   (threshold 0.5, minimum areas) applies as to any other model.

Every number of the pipeline is a buffer of this module (a float32 scalar),
so its state dict is the fitted parameters: ``best.pt`` loads with
``weights_only=True`` like any checkpoint. They are fitted by
``workflows.classical_search`` (train.py runs it for this model), never by
gradients: in train mode ``forward`` raises. ``PARAM_SPACE`` is the search
space: per parameter, its class, range and whether it is an integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from core.classes import NUM_CLASSES
from core.config import Config

OFF_STRIP_LEVEL = 12.0  # grey level under which (after a 9 px blur) the frame shows no strip
OFF_STRIP_MARGIN = 9  # px of the strip's own edge also left out
SCORE_GAIN = 2.0  # sigmoid slope per noise unit


@dataclass(frozen=True)
class Param:
    class_id: int  # the class whose score map it changes (1..4)
    default: float
    low: float
    high: float
    integer: bool = False


PARAM_SPACE: dict[str, Param] = {
    "pits_bg": Param(1, 12.0, 4.0, 40.0),
    "pits_disc": Param(1, 7, 3, 15, True),
    "pits_level": Param(1, 6.0, 2.0, 20.0),
    "pits_spread": Param(1, 12.0, 3.0, 40.0),
    "pits_threshold": Param(1, 3.0, 0.2, 20.0),
    "cross_bg": Param(2, 12.0, 4.0, 40.0),
    "cross_width": Param(2, 7, 3, 15, True),
    "cross_length": Param(2, 80, 20, 200, True),
    "cross_spread": Param(2, 15, 1, 41, True),
    "cross_threshold": Param(2, 4.0, 1.0, 15.0),
    "along_bg": Param(3, 20.0, 4.0, 60.0),
    "along_width": Param(3, 7, 3, 15, True),
    "along_length": Param(3, 120, 30, 400, True),
    "along_band_sigma": Param(3, 30.0, 5.0, 120.0),
    "along_spread": Param(3, 15, 1, 41, True),
    "along_threshold": Param(3, 4.0, 1.0, 15.0),
    "blotch_bg": Param(4, 100.0, 30.0, 250.0),
    "blotch_smooth": Param(4, 8.0, 2.0, 30.0),
    "blotch_threshold": Param(4, 3.0, 0.5, 15.0),
}


def class_params(class_id: int) -> list[str]:
    """The names of the parameters that change class ``class_id``'s score map."""
    return [name for name, p in PARAM_SPACE.items() if p.class_id == class_id]


class ClassicalPipeline(nn.Module):
    """OpenCV detectors of the four classes; see the module docstring.

    Eval mode: ``model(images float32 [B, 3, H, W] in [0, 1]) -> float32
    [B, 4, H, W]`` scores in [0, 1], any H and W (computed on the CPU with
    OpenCV, returned on the input's device). Whole strips
    (``predict.full_frame``) are what it was fitted on; tiles work too, but a
    background wider than a tile sees less of the strip.
    """

    target_kind = "semantic"
    fitted_by_search = True  # train.py fits it with workflows.classical_search, not the loop
    has_classification_head = False

    def __init__(self, params: dict[str, float] | None = None):
        super().__init__()
        values = {name: p.default for name, p in PARAM_SPACE.items()}
        values.update(params or {})
        for name, value in values.items():
            if name not in PARAM_SPACE:
                raise KeyError(f"unknown classical parameter {name!r}; valid: {', '.join(PARAM_SPACE)}")
            self.register_buffer(name, torch.tensor(float(value)))

    def params(self) -> dict[str, float]:
        """The parameters as plain numbers (ints for integer ones)."""
        return {name: _value(p, float(getattr(self, name))) for name, p in PARAM_SPACE.items()}

    def set_params(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            getattr(self, name).fill_(float(value))

    def forward(self, images: torch.Tensor, targets=None) -> torch.Tensor:
        if self.training:
            raise RuntimeError("the classical pipeline is fitted by a parameter search (train.py runs "
                               "workflows.classical_search for model.name=classical), not by gradients")
        params = self.params()
        greys = (images.detach().float().mean(1) * 255).cpu().numpy()
        scores = np.stack([class_scores(grey, params) for grey in greys])
        return torch.from_numpy(scores).to(images.device)

    def intermediate_maps(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        """Every step of the pipeline on one image (float32 [3, H, W] in [0, 1]),
        for pictures: name -> float32 [H, W] in [0, 1]."""
        grey = (image.detach().float().mean(0) * 255).cpu().numpy()
        return pipeline_maps(grey, self.params())


def build_classical(cfg: Config) -> ClassicalPipeline:
    return ClassicalPipeline()


# ---------------------------------------------------------------- the pipeline


def _value(p: Param, value: float) -> float:
    return int(round(value)) if p.integer else float(value)


def _odd(n: float) -> int:
    return max(1, int(round(n)) | 1)


def prepare(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """grey float [H, W] in 0..255 -> (the strip with the off-strip frame
    filled with its median grey, float32; bool [H, W] True on the strip)."""
    grey = np.ascontiguousarray(grey, np.float32)
    on_strip = cv2.blur(grey, (9, 9)) > OFF_STRIP_LEVEL
    if on_strip.all():
        return grey, on_strip
    if not on_strip.any():
        return np.zeros_like(grey), on_strip
    median = np.float32(np.median(grey[on_strip]))
    grain = noise_level((grey - cv2.GaussianBlur(grey, (0, 0), 2.0))[on_strip])
    margin = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * OFF_STRIP_MARGIN + 1, 2 * OFF_STRIP_MARGIN + 1))
    on_strip = cv2.erode(on_strip.astype(np.uint8), margin).astype(bool)
    # the strip's median plus noise as fine as its own: the noise levels of the filters stay the strip's
    fill = median + np.random.default_rng(0).normal(0, grain, grey.shape).astype(np.float32)
    return np.where(on_strip, grey, fill).astype(np.float32), on_strip


def smooth(image: np.ndarray, sigma: float, sigma_y: float | None = None) -> np.ndarray:
    """A Gaussian blur (sigma along x, sigma_y along y); along an axis where
    it is wider than 8 px it is computed on a copy shrunk by sigma / 4 (a
    blur's cost grows with its width), then enlarged."""
    sigma_y = sigma if sigma_y is None else sigma_y
    fx, fy = max(int(sigma // 4), 1), max(int(sigma_y // 4), 1)
    if fx == fy == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma, sigmaY=sigma_y)
    h, w = image.shape
    small = cv2.resize(image, (max(w // fx, 1), max(h // fy, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / fx, sigmaY=sigma_y / fy)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def flatten(grey: np.ndarray, sigma: float) -> np.ndarray:
    """The strip minus its Gaussian background, in units of its robust noise level."""
    flat = grey - smooth(grey, sigma)
    return flat / noise_level(flat)


def noise_level(flat: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (a Gaussian's sigma), at least 0.5 grey levels."""
    return max(1.4826 * float(np.median(np.abs(flat - np.median(flat)))), 0.5)


def hats(flat: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Marks, dark or bright, narrower than ``kernel``: max(top-hat, black-hat)."""
    return np.maximum(cv2.morphologyEx(flat, cv2.MORPH_TOPHAT, kernel),
                      cv2.morphologyEx(flat, cv2.MORPH_BLACKHAT, kernel))


def _line(length: float, vertical: bool) -> np.ndarray:
    n = _odd(length)
    return cv2.getStructuringElement(cv2.MORPH_RECT, (1, n) if vertical else (n, 1))


def _spread(response: np.ndarray, size: float) -> np.ndarray:
    n = _odd(size)
    return response if n == 1 else cv2.dilate(response, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (n, n)))


def pits_response(grey: np.ndarray, p: dict) -> np.ndarray:
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(p["pits_disc"]),) * 2)
    marked = (hats(flatten(grey, p["pits_bg"]), disc) > p["pits_level"]).astype(np.float32)
    return 100 * smooth(marked, p["pits_spread"])


def thin_marks(grey: np.ndarray, bg: float, width: float, length: float, vertical: bool) -> np.ndarray:
    """Thin marks at least ``length`` long in one direction: hats with a line of
    ``width`` across that direction, widened by 3 px across it (a slightly
    slanted or wavy mark still fills a straight line), opened with a line of
    ``length`` along it."""
    thin = cv2.dilate(hats(flatten(grey, bg), _line(width, vertical=not vertical)), _line(3, not vertical))
    return cv2.morphologyEx(thin, cv2.MORPH_OPEN, _line(length, vertical))


def cross_response(grey: np.ndarray, p: dict) -> np.ndarray:
    lines = thin_marks(grey, p["cross_bg"], p["cross_width"], p["cross_length"], vertical=True)
    return _spread(lines, p["cross_spread"])


def along_response(grey: np.ndarray, p: dict) -> np.ndarray:
    lines = thin_marks(grey, p["along_bg"], p["along_width"], p["along_length"], vertical=False)
    flat = grey - smooth(grey, 4 * p["along_bg"])
    band = np.abs(smooth(flat, p["along_band_sigma"], 2.0))
    band = cv2.morphologyEx(band / noise_level(band), cv2.MORPH_OPEN, _line(p["along_length"], vertical=False))
    return _spread(np.maximum(lines, band), p["along_spread"])


def blotch_response(grey: np.ndarray, p: dict) -> np.ndarray:
    flat = grey - smooth(grey, p["blotch_bg"])
    dark = -smooth(flat, p["blotch_smooth"])
    return dark / noise_level(flat)


RESPONSES = {1: pits_response, 2: cross_response, 3: along_response, 4: blotch_response}
THRESHOLD_KEYS = {1: "pits_threshold", 2: "cross_threshold", 3: "along_threshold", 4: "blotch_threshold"}


def to_score(response: np.ndarray, threshold: float) -> np.ndarray:
    """float32 scores in [0, 1]: 0.5 exactly at ``threshold``."""
    z = np.clip(SCORE_GAIN * (response - threshold), -30, 30)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def class_score(grey: np.ndarray, on_strip: np.ndarray, params: dict, class_id: int) -> np.ndarray:
    """One class's score map float32 [H, W] in [0, 1] of a ``prepare``d strip."""
    score = to_score(RESPONSES[class_id](grey, params), params[THRESHOLD_KEYS[class_id]])
    score[~on_strip] = 0.0
    return score


def class_scores(grey: np.ndarray, params: dict) -> np.ndarray:
    """grey float [H, W] in 0..255 -> float32 [4, H, W] scores in [0, 1]."""
    grey, on_strip = prepare(grey)
    return np.stack([class_score(grey, on_strip, params, c) for c in range(1, NUM_CLASSES + 1)])


def pipeline_maps(grey: np.ndarray, params: dict) -> dict[str, np.ndarray]:
    """The steps of the pipeline, each float32 [H, W] in [0, 1] for display:
    the flattened strip (0.5 = background), each class's response (1 = twice
    its threshold) and the strip mask."""
    grey, on_strip = prepare(grey)
    maps = {"on strip": on_strip.astype(np.float32),
            "flattened": np.clip(0.5 + flatten(grey, params["pits_bg"]) / 20, 0, 1)}
    names = {1: "pits: marked share", 2: "across: thin, opened", 3: "along: thin or band", 4: "blotch: darkness"}
    for class_id, name in names.items():
        response = RESPONSES[class_id](grey, params) * on_strip
        maps[name] = np.clip(response / (2 * params[THRESHOLD_KEYS[class_id]]), 0, 1).astype(np.float32)
    return maps
