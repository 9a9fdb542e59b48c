"""Run-length encoding in the Severstal/Kaggle convention.

A mask is a string of space-separated ``start length`` pairs. Pixels are
numbered from 1, top to bottom, then left to right (column-major): pixel 1 is
(row 0, col 0), pixel 2 is (row 1, col 0), pixel H+1 is (row 0, col 1). Pairs
are sorted, positive and non-overlapping; an empty string (or NaN) is an empty
mask.

Both directions are vectorised: the cost is O(runs) numpy work plus one pass
over the H*W pixels, with no per-run Python loop.
"""

from __future__ import annotations

import math

import numpy as np

STRIP_SHAPE = (256, 1600)  # (H, W) of a Severstal image


class RLEError(ValueError):
    """A malformed run-length string; the message names the problem and, when
    known, the csv file and row it came from."""


def _is_empty(rle) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def parse_runs(rle, shape=STRIP_SHAPE, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string and return ``(starts, lengths)`` as int64 arrays,
    starts 0-indexed into the column-major flattened mask.

    Raises RLEError naming the problem (and ``where``, e.g. "train.csv row 12").
    """
    if _is_empty(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    suffix = f" ({where})" if where else ""
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}{suffix}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"odd number of tokens ({len(tokens)}): RLE needs 'start length' pairs{suffix}")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        raise RLEError(f"non-integer token {bad!r}{suffix}") from None
    starts, lengths = values[0::2], values[1::2]
    n_pixels = int(shape[0]) * int(shape[1])
    if (bad := np.flatnonzero(starts < 1)).size:
        raise RLEError(f"start {starts[bad[0]]} < 1 in pair {bad[0]} (pixels are numbered from 1){suffix}")
    if (bad := np.flatnonzero(lengths < 1)).size:
        raise RLEError(f"length {lengths[bad[0]]} < 1 in pair {bad[0]}{suffix}")
    ends = starts + lengths - 1  # 1-indexed, inclusive
    if (bad := np.flatnonzero(ends > n_pixels)).size:
        i = bad[0]
        raise RLEError(
            f"run {starts[i]}+{lengths[i]} ends at pixel {ends[i]}, past the end of a "
            f"{shape[0]}x{shape[1]} image ({n_pixels} pixels){suffix}"
        )
    if (bad := np.flatnonzero(starts[1:] <= ends[:-1])).size:
        i = bad[0]
        kind = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
        raise RLEError(f"{kind} runs: pair {i + 1} starts at {starts[i + 1]}, pair {i} covers {starts[i]}..{ends[i]}{suffix}")
    return starts - 1, lengths


def rle_decode(rle, shape=STRIP_SHAPE, where: str | None = None) -> np.ndarray:
    """Decode an RLE string to a uint8 mask [H, W] with values in {0, 1}.

    ``shape`` is (H, W); ``where`` names the source for error messages.
    """
    starts, lengths = parse_runs(rle, shape, where)
    height, width = int(shape[0]), int(shape[1])
    # +1 at each run start, -1 one past each run end, then a running sum.
    edges = np.zeros(height * width + 1, np.int8)
    edges[starts] += 1
    edges[starts + lengths] -= 1
    flat = np.cumsum(edges[:-1], dtype=np.int8).astype(np.uint8)
    return flat.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask [H, W] (any dtype; nonzero is foreground) to the canonical
    RLE string: sorted, maximal runs, '' for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask [H, W], got shape {mask.shape}")
    flat = np.asarray(mask).T.reshape(-1) != 0
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])  # 0-indexed run starts and ends
    if changes.size == 0:
        return ""
    starts, ends = changes[0::2], changes[1::2]
    pairs = np.empty(changes.size, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_area(rle, shape=STRIP_SHAPE, where: str | None = None) -> int:
    """Number of foreground pixels of an RLE string, without decoding it."""
    return int(parse_runs(rle, shape, where)[1].sum())
