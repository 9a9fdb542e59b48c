"""Synthetic Severstal-like steel strips: the project's embedded default data.

There is no Kaggle data on the machines this project runs on, so the whole
pipeline (training, tiled prediction, scoring) runs on images drawn here. They
follow the real dataset where it matters to the code and the metric:

- grey 1600x256 strips (the strip runs along x) stored as 3-channel JPEGs with
  equal channels, named like ``0a1b2c3d4.jpg``;
- the Kaggle folder layout (``train.csv`` re-released layout, ``train_images/``,
  ``test_images/``, ``sample_submission.csv``) plus ``test_truth.csv``, the test
  masks, so predictions can be scored;
- real-like frequencies (``LABEL_SETS``): about 47% defect-free images, class 3
  the bulk of the masks, class 2 rare, a few images with two classes;
- four classes with the real geometry: 1 clusters of small pits, 2 thin
  scratches across the strip, 3 long scratches and streak bands along it,
  4 large dark blotches; masks are coarse annotator outlines (convex hulls,
  bands, polygons) around each painted region, never pixel-exact.

How the steel and the defects look is a style (``datasets/styles.py``): the
default ``classic`` is the generator's original look, byte for byte; other
named styles change grain, lighting, rolling marks, JPEG quality and the
defects' contrast, polarity and edges, and may draw defects inside real Kaggle
mask shapes (``datasets/real_shapes.py``). The style is part of the dataset
marker, so a folder made with another style is regenerated.

Everything random comes from ``np.random.default_rng`` seeded per image
(``image_rng``), so images can be drawn in any order, by any number of worker
processes, and the files are byte-identical for a given seed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.classes import CLASS_IDS, NUM_CLASSES
from core.files import atomic_write_text

from .real_shapes import place_real_shape, real_shapes
from .rle import STRIP_SHAPE, rle_encode
from .severstal import list_images, write_mask_csv
from .splits import SPLIT_FILE_GLOB
from .styles import DEFAULT_STYLE, STYLES, Style, resolve_style

GENERATOR_VERSION = 2  # bump whenever the images or masks a seed gives change
HEIGHT, WIDTH = STRIP_SHAPE
SPLITS = ("train", "test")
MARKER = "synthetic.json"

# Image-level label sets and their shares, matched to the real training set:
# 47% defect-free, masks 72% class 3 / 12.5% class 1 / 11.5% class 4 / 4% class 2,
# 5% of images with two classes.
LABEL_SETS = {
    (): 0.47,
    (3,): 0.3676,
    (1,): 0.0525,
    (4,): 0.0467,
    (2,): 0.0132,
    (1, 3): 0.02,
    (3, 4): 0.02,
    (2, 3): 0.01,
}
ALL_CLASSES_FROM = 20  # a split of at least this many images holds every class
OFF_STRIP_FRACTION = 0.15  # images where the strip leaves part of the frame black
CLASS_GAP = 40  # px between the x-ranges of two classes in one image

# Distinct first words keep the random streams apart (SeedSequence treats
# [s, a] and [s, a, 0] alike, so lengths alone would not).
_NAME_STREAM, _PLAN_STREAM, _IMAGE_STREAM, _STYLE_STREAM = 0, 1, 2, 3
CLASSIC = STYLES[DEFAULT_STYLE]


# --------------------------------------------------------------------------- plan

def image_rng(seed: int, split_index: int, image_index: int) -> np.random.Generator:
    """The generator that draws image ``image_index`` of split ``split_index``."""
    return np.random.default_rng([seed, _IMAGE_STREAM, split_index, image_index])


def image_names(n: int, seed: int) -> list[str]:
    """``n`` unique names of 9 hex digits + '.jpg', deterministic from ``seed``.
    make_dataset gives train the first ones and test the rest, so they never collide."""
    rng = np.random.default_rng([seed, _NAME_STREAM])
    names: dict[str, None] = {}  # insertion-ordered set
    while len(names) < n:
        for value in rng.integers(0, 16**9, size=n - len(names)).tolist():
            names[f"{value:09x}.jpg"] = None
    return list(names)


def plan_label_sets(n: int, seed: int, split_index: int) -> list[tuple[int, ...]]:
    """The classes each of ``n`` images will carry, shares as in LABEL_SETS.

    Stratified rather than sampled, so small splits keep the real proportions;
    a split of ALL_CLASSES_FROM or more images holds every class (rare class 2
    included), taken from the largest group if rounding left one out.
    """
    sets = list(LABEL_SETS)
    quotas = np.array(list(LABEL_SETS.values())) * n
    counts = np.floor(quotas).astype(int)
    by_remainder = np.argsort(-(quotas - counts), kind="stable")
    counts[by_remainder[: n - counts.sum()]] += 1
    if n >= ALL_CLASSES_FROM:
        for class_id in CLASS_IDS:
            if not any(class_id in s and k for s, k in zip(sets, counts)):
                counts[int(np.argmax(counts))] -= 1
                counts[sets.index((class_id,))] += 1
    labels = [s for s, k in zip(sets, counts) for _ in range(k)]
    order = np.random.default_rng([seed, _PLAN_STREAM, split_index]).permutation(n)
    return [labels[i] for i in order]


# ----------------------------------------------------------------------- drawing

def _smooth_profile(rng, length: int, knots: int) -> np.ndarray:
    """float32 [length]: a smooth random curve, about unit amplitude."""
    values = rng.standard_normal((1, knots)).astype(np.float32)
    return cv2.resize(values, (length, 1), interpolation=cv2.INTER_CUBIC)[0]


def _stretched_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """float32 [height, width]: noise with ``cells`` independent values per row,
    stretched along x, which is how rolling marks and streaks look."""
    noise = rng.standard_normal((height, max(cells, 2))).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)


def _blotch_noise(rng, height: int, width: int, cell: int) -> np.ndarray:
    """float32 [height, width]: smooth noise with blobs about ``cell`` px across."""
    coarse = rng.standard_normal((max(height // cell, 2), max(width // cell, 2))).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _amplitude(rng, nominal: float, style: Style) -> float:
    """A defect's contrast in grey levels: mostly clear, sometimes faint."""
    faint = rng.random() < style.faint_fraction
    return nominal * style.contrast * (rng.uniform(0.4, 0.6) if faint else rng.uniform(0.8, 1.3))


def _polarity(style: Style, native: tuple[float, float]) -> tuple[float, float]:
    """(chance darker, chance brighter) of a defect: the class's ``native``
    odds, unless the style sets its own ``dark_share``."""
    return native if style.dark_share is None else (style.dark_share, 1.0 - style.dark_share)


def _box(points: np.ndarray, pad: float) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) around points [N, 2] (x, y), padded, inside the image."""
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, WIDTH), min(y1, HEIGHT)


def _draw_polyline(rng, image: np.ndarray, line: np.ndarray, amplitude: float, thickness: int,
                   style: Style) -> None:
    """Add a slightly blurred polyline (points [N, 2] as (x, y)) to ``image``,
    its contrast wandering along its length as a real scratch's does."""
    x0, y0, x1, y1 = _box(line, thickness + 3)
    patch = np.zeros((y1 - y0, x1 - x0), np.float32)
    local = np.round(line - (x0, y0)).astype(np.int32)
    cv2.polylines(patch, [local], False, float(amplitude), thickness)
    along_x = x1 - x0 >= y1 - y0
    fade = (0.75 + 0.3 * _smooth_profile(rng, patch.shape[1 if along_x else 0], 5)).clip(0.2, 1.3)
    patch *= fade[None, :] if along_x else fade[:, None]
    image[y0:y1, x0:x1] += cv2.GaussianBlur(patch, (0, 0), 0.7 * style.edge_softness)


def _band_outline(line: np.ndarray, half_width: float, normal) -> np.ndarray:
    """int32 polygon [2N, 2] around a polyline [N, 2] (x, y): the line shifted by
    +-half_width along ``normal`` (a unit (dx, dy)), its ends pushed out along
    the line by half of that, as an annotator would draw a scratch."""
    line = line.astype(np.float64).copy()
    for end, inner in ((0, 1), (-1, -2)):
        direction = line[end] - line[inner]
        line[end] += direction / np.linalg.norm(direction) * half_width / 2
    offset = np.asarray(normal, np.float64) * half_width
    return np.round(np.concatenate([line - offset, (line + offset)[::-1]])).astype(np.int32)


_RING = np.stack([np.cos(a := np.linspace(0, 2 * np.pi, 8, endpoint=False)), np.sin(a)], 1)


def _disc_hull(points: np.ndarray, radii: np.ndarray, margin: float) -> np.ndarray:
    """int32 convex hull around discs at points [N, 2] (x, y), grown by ``margin``."""
    ring = points[:, None, :] + _RING[None] * (radii[:, None, None] + margin)
    return cv2.convexHull(np.round(ring.reshape(-1, 2)).astype(np.int32))


# ---------------------------------------------------------------- the background

def steel_background(rng, style: Style = CLASSIC) -> np.ndarray:
    """float32 [H, W] grey steel around mean ``style.level`` (classic: 85-135):
    lighting that drifts along and across the strip, rolling marks and streaks
    along the grain, and grain; with the style's ranges, a linear lighting
    gradient and periodic roll imprints."""
    level = rng.uniform(*style.level)
    light_x = _smooth_profile(rng, WIDTH, int(rng.integers(*style.light_knots))) * rng.uniform(*style.light_along)
    light_y = _smooth_profile(rng, HEIGHT, 3) * rng.uniform(*style.light_across)
    marks = _grain_streaks(rng, 80, style.grain_axis) * rng.uniform(*style.roll_marks)
    fine = _grain_streaks(rng, 10, style.grain_axis) * rng.uniform(*style.streaks)
    grain = (_grain_values(rng, style.grain_size) - 0.5) * rng.uniform(*style.grain)
    image = marks + fine + grain
    image += light_y[:, None]
    image += light_x[None, :] + np.float32(level)
    if style.ramp[1] > 0:  # classic draws neither: its random stream must stay as it was
        image += _lighting_ramp(rng, style.ramp)
    if style.roll_imprints[1] > 0:
        image += _roll_imprints(rng, style.roll_imprints)[None, :]
    return image


def _grain_streaks(rng, cell: int, axis: str) -> np.ndarray:
    """float32 [H, W]: noise stretched along ``axis`` ("x": along the strip,
    "y": across it), a new value every ``cell`` px of that axis."""
    if axis == "x":
        return _stretched_noise(rng, HEIGHT, WIDTH, WIDTH // cell)
    return _stretched_noise(rng, WIDTH, HEIGHT, HEIGHT // cell).T


def _grain_values(rng, size: int) -> np.ndarray:
    """float32 [H, W] in [0, 1): grain, one value per pixel (``size`` 1) or
    per ``size`` px, interpolated. Uniform rather than normal: several times
    cheaper to draw and, after JPEG, alike."""
    if size == 1:
        return rng.random((HEIGHT, WIDTH), np.float32)
    coarse = rng.random((HEIGHT // size + 1, WIDTH // size + 1), np.float32)
    return cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)


def _lighting_ramp(rng, amplitude: tuple[float, float]) -> np.ndarray:
    """float32 [H, W]: a linear gradient in a random direction, changing by up
    to the drawn amplitude (grey levels) across the frame."""
    angle = rng.uniform(0, 2 * np.pi)
    u = np.arange(WIDTH, dtype=np.float32)[None, :] / WIDTH - 0.5
    v = np.arange(HEIGHT, dtype=np.float32)[:, None] / HEIGHT - 0.5
    return np.float32(rng.uniform(*amplitude)) * (np.float32(np.cos(angle)) * u + np.float32(np.sin(angle)) * v)


def _roll_imprints(rng, amplitude: tuple[float, float]) -> np.ndarray:
    """float32 [W]: the mark a roll prints once per turn (every 150-400 px
    along the strip), a narrow band across it, the same sign every turn."""
    period = rng.uniform(150, 400)
    centres = np.arange(rng.uniform(0, period), WIDTH, period)
    heights = rng.uniform(*amplitude) * rng.choice((-1.0, 1.0)) * rng.uniform(0.7, 1.0, len(centres))
    distance = (np.arange(WIDTH)[None, :] - centres[:, None]) / rng.uniform(1.5, 4.0)
    return (heights[:, None] * np.exp(-0.5 * distance**2)).sum(0).astype(np.float32)


def add_distractors(rng, image: np.ndarray) -> None:
    """Paint what is not a defect: isolated specks (pits come in clusters) and
    broad, soft, low-contrast stains (dark patches are strong and blotchy)."""
    n = int(rng.integers(5, 40))
    ys, xs = rng.integers(0, HEIGHT, n), rng.integers(0, WIDTH, n)
    image[ys, xs] += rng.uniform(20, 70, n).astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        sx, sy = rng.uniform(20, 140), rng.uniform(10, 60)
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        x0, y0, x1, y1 = _box(np.array([[cx - 3 * sx, cy - 3 * sy], [cx + 3 * sx, cy + 3 * sy]]), 0)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        blob = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)).astype(np.float32)
        image[y0:y1, x0:x1] += blob * rng.uniform(5, 14) * rng.choice((1, -1), p=(0.7, 0.3))


def off_strip_region(rng) -> tuple[np.ndarray | None, int, int]:
    """Where the strip does not fill the frame (in OFF_STRIP_FRACTION of images).

    Returns (region, lo, hi): region bool [H, W] or None, and the columns
    [lo, hi) in which defects may be placed, clear of the region's slanted edge.
    """
    if rng.random() >= OFF_STRIP_FRACTION:
        return None, 0, WIDTH
    rows = np.arange(HEIGHT) - HEIGHT / 2
    edge = rng.uniform(60, 450) + rows * rng.uniform(-0.15, 0.15) + _smooth_profile(rng, HEIGHT, 6) * 2
    cols = np.arange(WIDTH)[None, :]
    margin = 30
    if rng.random() < 0.5:
        return cols < edge[:, None], int(edge.max()) + margin, WIDTH
    return cols >= WIDTH - edge[:, None], 0, WIDTH - int(edge.max()) - margin


# -------------------------------------------------------------------- the defects
# Each painter adds one class's defects to ``image`` (float32 [H, W]) inside
# columns [lo, hi), in the look of ``style``, and fills that class's ``mask``
# (uint8 [H, W]) with the coarse outline of every region it painted. Every
# call paints something.

def paint_pits(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, style: Style) -> None:
    """Class 1: clusters of small dark (some bright) pits; small masks."""
    for _ in range(int(rng.choice((1, 1, 2, 3)))):
        n = int(rng.integers(6, 30))
        spread = rng.uniform(5, 20) * np.array([rng.uniform(1, 2.5), 1.0])
        centre = (rng.uniform(lo + 40, hi - 40), rng.uniform(20, HEIGHT - 20))
        points = rng.normal(centre, spread, (n, 2))
        points[:, 0] = points[:, 0].clip(lo + 12, hi - 12)
        points[:, 1] = points[:, 1].clip(3, HEIGHT - 4)
        radii = rng.uniform(1.0, 3.2, n)
        values = _amplitude(rng, 70, style) * np.where(rng.random(n) < _polarity(style, (0.75, 0.25))[0], -1.0, 0.8)
        x0, y0, x1, y1 = _box(points, 6)
        patch = np.zeros((y1 - y0, x1 - x0), np.float32)
        for (x, y), r, v in zip(np.round(points - (x0, y0)).astype(int), np.round(radii).astype(int), values):
            cv2.circle(patch, (int(x), int(y)), int(r), float(v), -1)
        image[y0:y1, x0:x1] += cv2.GaussianBlur(patch, (0, 0), 0.8 * style.edge_softness)
        cv2.fillPoly(mask, [_disc_hull(points, radii, rng.uniform(3, 8))], 1)


def paint_cross_scratches(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, style: Style) -> None:
    """Class 2: thin, nearly vertical scratches across most of the strip's width."""
    for _ in range(int(rng.choice((1, 1, 1, 2)))):
        ys = np.linspace(rng.uniform(0, 50), rng.uniform(HEIGHT - 50, HEIGHT), 6)
        xs = rng.uniform(lo + 50, hi - 50) + np.linspace(0, rng.uniform(-30, 30), 6) + rng.normal(0, 1.5, 6)
        line = np.stack([xs, ys], 1)
        amplitude = _amplitude(rng, 70, style) * rng.choice((-1, 1), p=_polarity(style, (0.7, 0.3)))
        _draw_polyline(rng, image, line, amplitude, int(rng.integers(2, 4)), style)
        cv2.fillPoly(mask, [_band_outline(line, rng.uniform(6, 14), (1, 0))], 1)


def _long_scratch(rng, image, mask, lo, hi, style) -> None:
    span = hi - lo - 40
    length = rng.uniform(min(150, span), min(1400, span))
    xs = np.linspace(0, length, 8) + rng.uniform(lo + 20, hi - 20 - length)
    ys = (rng.uniform(20, HEIGHT - 20) + np.cumsum(rng.normal(0, 2.5, 8))).clip(14, HEIGHT - 14)
    line = np.stack([xs, ys], 1)
    amplitude = _amplitude(rng, 60, style) * rng.choice((-1, 1), p=_polarity(style, (0.6, 0.4)))
    offsets = np.concatenate([[0.0], rng.uniform(-6, 6, int(rng.choice((0, 0, 1, 2))))])
    for dy in offsets:  # a bundle of parallel scratches, as a roll leaves them
        _draw_polyline(rng, image, line + (0, dy), amplitude, int(rng.integers(1, 3)), style)
    half_width = rng.uniform(7, 14) + np.abs(offsets).max()
    cv2.fillPoly(mask, [_band_outline(line, half_width, (0, 1))], 1)


def _streak_band(rng, image, mask, lo, hi, style) -> None:
    span = hi - lo - 40
    length = rng.uniform(min(150, span), min(900, span))
    height = rng.uniform(14, min(90, length / 3))  # long and low, unlike a class-4 blotch
    xs = np.linspace(0, length, 9) + rng.uniform(lo + 20, hi - 20 - length)
    middle = rng.uniform(4 + height / 2, HEIGHT - 4 - height / 2) + np.cumsum(rng.normal(0, 2, 9))
    # blunt-pointed ends and ragged sides: the band's outline as an annotator draws it
    half = height / 2 * (0.3 + 0.7 * np.sin(np.linspace(0, np.pi, 9)) ** 0.5)
    top = middle - half + rng.normal(0, height * 0.06, 9)
    bottom = middle + half + rng.normal(0, height * 0.06, 9)
    polygon = np.concatenate([np.stack([xs, top], 1), np.stack([xs, bottom], 1)[::-1]])
    polygon[:, 1] = polygon[:, 1].clip(0, HEIGHT - 1)
    x0, y0, x1, y1 = _box(polygon, 4)
    shape = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(shape, [np.round(polygon - (x0, y0)).astype(np.int32)], 1)
    envelope = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 3 * style.edge_softness)
    streaks = _streak_texture(rng, y1 - y0, x1 - x0)
    streaks += rng.choice((-1.0, 0.7), p=_polarity(style, (0.7, 0.3)))  # mostly darker than the steel around
    image[y0:y1, x0:x1] += _amplitude(rng, 32, style) * envelope * streaks
    mask[y0:y1, x0:x1] |= shape


def _streak_texture(rng, height: int, width: int) -> np.ndarray:
    """float32 [height, width]: soft streaks along x, about unit amplitude."""
    return cv2.GaussianBlur(_stretched_noise(rng, height, width, width // 50), (0, 0), 2, sigmaY=0.8)


def paint_long_defects(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, style: Style) -> None:
    """Class 3: long scratches and wide streak bands along the strip."""
    for _ in range(int(rng.choice((1, 1, 1, 2)))):
        (_long_scratch if rng.random() < 0.5 else _streak_band)(rng, image, mask, lo, hi, style)


def paint_dark_patches(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, style: Style) -> None:
    """Class 4: large dark blotches with mottled insides; big masks."""
    for _ in range(int(rng.choice((1, 1, 1, 2)))):
        span = hi - lo - 40
        w = int(rng.uniform(min(120, span), min(480, span)))
        h = int(rng.uniform(90, HEIGHT + 1))
        x0, y0 = int(rng.uniform(lo + 20, hi - 20 - w)), int(rng.uniform(0, HEIGHT - h + 1))
        yy, xx = np.ogrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
        radius2 = xx**2 + yy**2
        lumps = _blotch_noise(rng, h, w, cell=max(h, w) // 4)
        blob = (((1.0 - radius2 + 0.35 * lumps > 0.3) & (radius2 < 1)) | (radius2 < 0.1)).astype(np.uint8)
        contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = np.zeros_like(blob)  # one convex outline around all of the blotch
        cv2.fillPoly(outline, [cv2.convexHull(np.concatenate(contours))], 1)
        soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 3 * style.edge_softness)
        mottle = _mottle_texture(rng, h, w)
        image[y0 : y0 + h, x0 : x0 + w] += _patch_sign(rng, style) * _amplitude(rng, 55, style) * soft * mottle
        mask[y0 : y0 + h, x0 : x0 + w] |= outline


def _mottle_texture(rng, height: int, width: int) -> np.ndarray:
    """float32 [height, width]: about 0.75 +- 0.3, in blobs about 10 px across."""
    return 0.75 + 0.3 * _blotch_noise(rng, height, width, cell=10)


def _patch_sign(rng, style: Style) -> float:
    """-1.0 (a class-4 patch is darker than the steel) unless the style sets a
    ``dark_share``; only then is a sign drawn, so classic's stream is as it was."""
    if style.dark_share is None:
        return -1.0
    return float(rng.choice((-1.0, 1.0), p=_polarity(style, (1.0, 0.0))))


PAINTERS = {1: paint_pits, 2: paint_cross_scratches, 3: paint_long_defects, 4: paint_dark_patches}


# ----------------------------------------------------------- in real mask shapes
# Textures [h, w] of about unit amplitude, signed by ``sign`` (-1 darker than
# the steel), that fill a real shape's box; the shape's blurred outline scales them.

def _pits_in(rng, shape: np.ndarray, sign: float, style: Style) -> np.ndarray:
    """Class 1: small round pits scattered over the shape, one per ~40 px of it (6 to 300)."""
    inside = np.flatnonzero(shape)
    n = int(np.clip(inside.size // 40, 6, 300))
    width = shape.shape[1]
    patch = np.zeros(shape.shape, np.float32)
    for i, r in zip(rng.choice(inside, n).tolist(), rng.integers(1, 4, n).tolist()):
        cv2.circle(patch, (i % width, i // width), r, sign, -1)
    return cv2.GaussianBlur(patch, (0, 0), 0.8 * style.edge_softness)


def _cross_streaks_in(rng, shape: np.ndarray, sign: float, style: Style) -> np.ndarray:
    """Class 2: streaks across the strip (along y)."""
    height, width = shape.shape
    streaks = np.ascontiguousarray(_stretched_noise(rng, width, height, max(height // 40, 2)).T)
    return sign + 0.6 * cv2.GaussianBlur(streaks, (0, 0), 0.8, sigmaY=2)


def _long_streaks_in(rng, shape: np.ndarray, sign: float, style: Style) -> np.ndarray:
    """Class 3: streaks along the strip, as in a streak band."""
    return sign + _streak_texture(rng, *shape.shape)


def _mottle_in(rng, shape: np.ndarray, sign: float, style: Style) -> np.ndarray:
    """Class 4: a mottled stain, as in a dark patch."""
    return sign * _mottle_texture(rng, *shape.shape)


# per class: (texture, nominal contrast in grey levels, native (darker, brighter) odds)
REAL_SHAPE_LOOKS = {1: (_pits_in, 70, (0.75, 0.25)), 2: (_cross_streaks_in, 50, (0.7, 0.3)),
                    3: (_long_streaks_in, 32, (0.7, 0.3)), 4: (_mottle_in, 55, (1.0, 0.0))}
REAL_SHAPE_PAD = 8  # px around a shape's box that its blurred edge may reach


def paint_real_shape(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, class_id: int,
                     style: Style) -> None:
    """Any class: a real mask of ``class_id`` placed in columns [lo, hi)
    (datasets/real_shapes.py) is the mask; the class's texture fills it, its
    edge blurred by the style's softness."""
    shape = place_real_shape(rng, class_id, lo, hi)
    rows, cols = np.flatnonzero(shape.any(1)), np.flatnonzero(shape.any(0))
    y0, x0 = max(rows[0] - REAL_SHAPE_PAD, 0), max(cols[0] - REAL_SHAPE_PAD, 0)
    y1, x1 = min(rows[-1] + REAL_SHAPE_PAD + 1, HEIGHT), min(cols[-1] + REAL_SHAPE_PAD + 1, WIDTH)
    box = shape[y0:y1, x0:x1]
    texture, nominal, native = REAL_SHAPE_LOOKS[class_id]
    sign = float(rng.choice((-1.0, 1.0), p=_polarity(style, native)))
    envelope = cv2.GaussianBlur(box.astype(np.float32), (0, 0), 1.5 * style.edge_softness)
    image[y0:y1, x0:x1] += _amplitude(rng, nominal, style) * envelope * texture(rng, box, sign, style)
    mask |= shape


def paint_class(rng, image: np.ndarray, mask: np.ndarray, lo: int, hi: int, class_id: int, style: Style) -> None:
    """One class's defects: inside a real shape in ``style.real_shapes`` of
    the calls (none in classic, which draws nothing for it), else its painter."""
    if style.real_shapes and rng.random() < style.real_shapes:
        paint_real_shape(rng, image, mask, lo, hi, class_id, style)
    else:
        PAINTERS[class_id](rng, image, mask, lo, hi, style)


def _class_ranges(rng, lo: int, hi: int, k: int) -> list[tuple[int, int]]:
    """Split columns [lo, hi) into ``k`` (1 or 2) disjoint ranges, CLASS_GAP apart,
    so that no pixel can carry two classes."""
    if k <= 1:
        return [(lo, hi)]
    cut = int(rng.uniform(lo + 0.35 * (hi - lo), hi - 0.35 * (hi - lo)))
    ranges = [(lo, cut - CLASS_GAP // 2), (cut + CLASS_GAP // 2, hi)]
    return ranges if rng.random() < 0.5 else ranges[::-1]


def generate_image(rng: np.random.Generator, classes=(), style: Style = CLASSIC) -> tuple[np.ndarray, np.ndarray]:
    """Draw one strip in ``style`` carrying defects of ``classes`` (a subset of 1..4, at most 2).

    Returns ``(image, masks)``: image uint8 [256, 1600] grey; masks uint8
    [4, 256, 1600] in {0, 1}, channel c is class c+1, non-empty exactly for
    ``classes``, no pixel in two channels, none where the strip leaves the frame.
    """
    if len(classes) > 2 or len(set(classes)) != len(classes) or not set(classes) <= set(CLASS_IDS):
        raise ValueError(f"classes must be at most two distinct ids from {CLASS_IDS}, got {classes}")
    image = steel_background(rng, style)
    add_distractors(rng, image)
    region, lo, hi = off_strip_region(rng)
    masks = np.zeros((NUM_CLASSES, HEIGHT, WIDTH), np.uint8)
    for class_id, (a, b) in zip(classes, _class_ranges(rng, lo, hi, len(classes))):
        paint_class(rng, image, masks[class_id - 1], a, b, class_id, style)
    if region is not None:
        image[region] = rng.uniform(2, 12) + rng.random(int(region.sum()), np.float32) * 4
        masks[:, region] = 0  # already clear by construction; this makes it a guarantee
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), masks


def generate_split(n: int, seed: int, split_index: int = 0, style: Style = CLASSIC):
    """Yield ``(image, masks)`` for the ``n`` images of a split, exactly as
    make_dataset draws them in ``style`` (before JPEG), without touching the disk."""
    for index, classes in enumerate(plan_label_sets(n, seed, split_index)):
        yield generate_image(image_rng(seed, split_index, index), classes, style)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a grey uint8 [H, W] image stored, like the real ones, as
    3 equal channels (a grey input gives equal channels after decoding too)."""
    ok, data = cv2.imencode(".jpg", cv2.merge([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG")
    return data.tobytes()


# ---------------------------------------------------------------------- the files

def _render(task) -> tuple[str, dict[int, str]]:
    """Draw one image, write its JPEG and return (name, {class_id: rle})."""
    seed, split_index, index, classes, path, style = task
    rng = image_rng(seed, split_index, index)
    image, masks = generate_image(rng, classes, style)
    Path(path).write_bytes(encode_jpeg(image, int(rng.integers(*style.jpeg_quality))))
    return Path(path).name, {c: rle_encode(masks[c - 1]) for c in classes}


def _split_summary(names: list[str], rles: dict[str, dict[int, str]]) -> dict:
    return {
        "images": len(names),
        "defect_free": sum(not rles[n] for n in names),
        "two_class": sum(len(rles[n]) >= 2 for n in names),
        "masks_per_class": [sum(c in rles[n] for n in names) for c in CLASS_IDS],
    }


def _complete_summary(out: Path, params: dict) -> dict | None:
    """The stored summary if ``out`` holds a finished dataset made with ``params``."""
    try:
        stored = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    # a marker written before styles existed describes a classic dataset, byte for byte
    stored = {"style": DEFAULT_STYLE, "style_params": CLASSIC.to_dict(), **stored}
    if not stored.get("complete") or {k: stored.get(k) for k in params} != params:
        return None
    names = image_names(params["n_train"] + params["n_test"], params["seed"])
    expected = {"train_images": names[: params["n_train"]], "test_images": names[params["n_train"] :]}
    for folder, wanted in expected.items():
        if not (out / folder).is_dir() or list_images(out / folder) != sorted(wanted):
            return None
    if not all((out / f).is_file() for f in ("train.csv", "test_truth.csv", "sample_submission.csv")):
        return None
    return stored["summary"]


def _prepare_dir(out: Path, params: dict) -> None:
    """Make ``out`` ready for a fresh dataset: remove the images of an earlier
    synthetic dataset (the image folder is the list of samples, so stale ones
    would join it) and the K-fold split files that list them, and mark the
    dataset incomplete until it is finished. A folder that holds images and
    no marker is not ours: refuse to touch it."""
    marker = out / MARKER
    for folder in ("train_images", "test_images"):
        path = out / folder
        if path.is_dir() and not marker.exists() and any(path.iterdir()):
            raise FileExistsError(
                f"{path} already holds files that this generator did not write (no {MARKER}); "
                "choose an empty --out folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.jpg"):
            old.unlink()
    if marker.exists():  # K-fold splits of the old images
        for split_file in out.glob(SPLIT_FILE_GLOB):
            split_file.unlink()
    atomic_write_text(marker, json.dumps({**params, "complete": False}, indent=2) + "\n")


def _pool_context():
    # Not fork: forking a process whose OpenCV/torch thread pools are running can deadlock.
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def dataset_style(name: str, seed: int) -> Style:
    """The style a dataset named ``name`` and seeded ``seed`` is drawn in
    (``random``: drawn from the seed)."""
    return resolve_style(name, np.random.default_rng([seed, _STYLE_STREAM]))


def make_dataset(out_dir, n_train: int, n_test: int, seed: int, workers: int | None = None,
                 force: bool = False, progress: bool = True, style: str = DEFAULT_STYLE) -> dict:
    """Write a synthetic dataset in the Kaggle layout under ``out_dir``, in the
    look of ``style`` (a name of datasets.styles.STYLE_CHOICES).

    Files: ``train.csv`` and ``test_truth.csv`` (``ImageId,ClassId,EncodedPixels``,
    one row per non-empty mask), ``sample_submission.csv`` (every test image x
    class 1..4, EncodedPixels "1 1"), ``train_images/*.jpg``, ``test_images/*.jpg``
    and ``synthetic.json`` (arguments, version, style and its values, summary).
    If ``out_dir`` already holds a complete dataset made with the same
    arguments and style values, nothing is redrawn unless ``force``.
    ``workers`` processes draw images (default min(2, CPUs)); the files do
    not depend on it.

    Raises FileNotFoundError, before writing anything, when the style draws
    real mask shapes and their csv is missing (datasets/real_shapes.py).

    Returns a summary dict: ``params`` (version, n_train, n_test, seed, style,
    style_params), ``splits``
    ({"train"|"test": {images, defect_free, two_class, masks_per_class: [4 ints]}}),
    ``skipped``, ``out``, ``seconds``, ``ms_per_image`` (wall, None if skipped), ``workers``.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    out = Path(out_dir)
    look = dataset_style(style, seed)
    if look.real_shapes:
        real_shapes()  # fails here, naming the csv, rather than in a worker
    params = {"version": GENERATOR_VERSION, "n_train": int(n_train), "n_test": int(n_test), "seed": int(seed),
              "style": style, "style_params": look.to_dict()}
    workers = default_workers() if workers is None else max(int(workers), 1)
    started = time.perf_counter()
    if not force and (stored := _complete_summary(out, params)) is not None:
        return {"params": params, "splits": stored, "skipped": True, "out": str(out),
                "seconds": time.perf_counter() - started, "ms_per_image": None, "workers": 0}
    _prepare_dir(out, params)
    names = image_names(n_train + n_test, seed)
    split_names = {"train": names[:n_train], "test": names[n_train:]}
    tasks = [
        (seed, split_index, index, classes, str(out / f"{split}_images" / split_names[split][index]), look)
        for split_index, split in enumerate(SPLITS)
        for index, classes in enumerate(plan_label_sets(len(split_names[split]), seed, split_index))
    ]
    rles = dict(_run_tasks(tasks, workers, progress))
    _write_csvs(out, split_names, rles)
    splits = {split: _split_summary(ids, rles) for split, ids in split_names.items()}
    atomic_write_text(out / MARKER, json.dumps({**params, "complete": True, "summary": splits}, indent=2) + "\n")
    seconds = time.perf_counter() - started
    return {"params": params, "splits": splits, "skipped": False, "out": str(out), "seconds": seconds,
            "ms_per_image": 1000 * seconds / max(len(tasks), 1), "workers": workers}


def _run_tasks(tasks: list, workers: int, progress: bool):
    bar = dict(total=len(tasks), desc="synthetic images", unit="img", disable=not progress)
    if workers == 1 or len(tasks) < 2 * workers:
        yield from tqdm(map(_render, tasks), **bar)
        return
    with _pool_context().Pool(workers) as pool:
        yield from tqdm(pool.imap_unordered(_render, tasks, chunksize=4), **bar)


def _write_csvs(out: Path, split_names: dict[str, list[str]], rles: dict[str, dict[int, str]]) -> None:
    train, test = sorted(split_names["train"]), sorted(split_names["test"])
    write_mask_csv(out / "train.csv", {n: rles[n] for n in train}, image_ids=train)
    write_mask_csv(out / "test_truth.csv", {n: rles[n] for n in test}, image_ids=test)
    # Kaggle's sample submission marks every pair "1 1"; write_mask_csv would write "".
    sample = pd.DataFrame(
        [(n, "1 1", c) for n in test for c in CLASS_IDS], columns=["ImageId", "EncodedPixels", "ClassId"]
    )
    atomic_write_text(out / "sample_submission.csv", sample.to_csv(index=False))


def format_summary(summary: dict) -> str:
    """A few human-readable lines about a make_dataset summary."""
    p = summary["params"]
    what = f"{summary['out']}: style {p['style']}, seed {p['seed']}, {p['n_train']} train + {p['n_test']} test images"
    if summary["skipped"]:
        lines = [f"{what}: already generated with these arguments (generator v{p['version']}); "
                 "skipped (--force regenerates)"]
    else:
        lines = [f"{what}: generated in {summary['seconds']:.1f} s "
                 f"({summary['ms_per_image']:.1f} ms/image wall, {summary['workers']} workers)"]
    lines.append(f"{'split':<6} {'images':>6} {'defect-free':>12} {'two-class':>9}  masks: class 1 / 2 / 3 / 4")
    for split, s in summary["splits"].items():
        free = s["defect_free"] / max(s["images"], 1)
        counts = " / ".join(map(str, s["masks_per_class"]))
        lines.append(f"{split:<6} {s['images']:>6} {free:>11.1%} {s['two_class']:>9}  {counts}")
    return "\n".join(lines)
