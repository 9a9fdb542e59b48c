"""Real defect outlines for synthetic strips: the masks of Kaggle training images.

``train_masks_5028.csv`` (re-released layout, Kaggle RLE, 1600x256) holds the
2,845 masks of 5,028 real training images, without their pixels. A style with
``real_shapes`` draws some of its defects inside one of those masks, of the
defect's class, flipped and shifted along the strip; the mask is that shape and
the texture inside it is the style's. No real pixel is ever copied.

Where the csv is looked for: ``$SEVERSTAL_REAL_DIR`` when set, else
``../shared/real/`` next to the repository (``<repo>/../shared/real``). The csv
is read once per process, on the first shape drawn; without it a style that
needs it fails with an error naming the path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from core.classes import CLASS_IDS

from .rle import STRIP_SHAPE, rle_decode
from .severstal import read_mask_table

REAL_DIR_ENV = "SEVERSTAL_REAL_DIR"
REAL_MASKS = "train_masks_5028.csv"
HEIGHT, WIDTH = STRIP_SHAPE


def real_data_dir() -> Path:
    """``$SEVERSTAL_REAL_DIR``, else ``<repository>/../shared/real``."""
    return Path(os.environ.get(REAL_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "real")


def real_masks_path() -> Path:
    return real_data_dir() / REAL_MASKS


@functools.lru_cache(maxsize=4)
def _shapes_of(path: Path) -> dict[int, tuple[str, ...]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"real mask shapes not found: {path} (styles with real_shapes draw defects inside them); "
            f"set {REAL_DIR_ENV} to the folder that holds {REAL_MASKS}, or choose a style without real shapes")
    table = read_mask_table(path, STRIP_SHAPE)
    return {c: tuple(table.loc[table["ClassId"] == c, "EncodedPixels"]) for c in CLASS_IDS}


def real_shapes() -> dict[int, tuple[str, ...]]:
    """RLE strings of the real masks by class id (1..4), in file order; read
    once per process. Raises FileNotFoundError naming the path when absent."""
    return _shapes_of(real_masks_path())


def place_real_shape(rng: np.random.Generator, class_id: int, lo: int, hi: int) -> np.ndarray:
    """A real mask of class ``class_id``, drawn at random, flipped left-right
    and up-down each with chance 1/2, shifted along the strip to a random place
    inside columns [lo, hi) (cut at ``hi`` when wider than the range).

    Returns uint8 [256, 1600] in {0, 1}, non-empty, zero outside [lo, hi).
    """
    pool = real_shapes()[class_id]
    shape = rle_decode(pool[int(rng.integers(len(pool)))], STRIP_SHAPE)
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    if rng.random() < 0.5:
        shape = shape[::-1]
    columns = np.flatnonzero(shape.any(0))
    first, width = int(columns[0]), int(columns[-1] - columns[0] + 1)
    start = lo + int(rng.integers(max(hi - lo - width, 0) + 1))
    width = min(width, hi - start)
    placed = np.zeros(STRIP_SHAPE, np.uint8)
    placed[:, start : start + width] = shape[:, first : first + width]
    return placed
