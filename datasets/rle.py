"""Run-length encoding in the Severstal/Kaggle convention.

A mask is a string of space-separated ``start length`` pairs. Pixels are
numbered from 1, top to bottom, then left to right (column-major): pixel 1 is
(row 0, col 0), pixel 2 is (row 1, col 0), pixel H+1 is (row 0, col 1). Pairs
are sorted, positive and non-overlapping; an empty string (or NaN) is an empty
mask.

Both directions are vectorised, with no per-run Python loop: a string of plain
digits is parsed in C (``np.fromstring``), runs are expanded with ``np.repeat``
and the column-major pixel order is turned into an [H, W] array by one
``cv2.transpose`` (several times faster than a strided numpy copy).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

STRIP_SHAPE = (256, 1600)  # (H, W) of a Severstal image
_PLAIN = b"0123456789 "  # the characters of a canonical RLE string


class RLEError(ValueError):
    """A malformed run-length string; the message names the problem and, when
    known, the csv file and row it came from."""


def _is_empty(rle) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _check_even(n_tokens: int, suffix: str) -> None:
    if n_tokens % 2:
        raise RLEError(f"odd number of tokens ({n_tokens}): RLE needs 'start length' pairs{suffix}")


def _parse_values(rle: str, suffix: str) -> np.ndarray:
    """The integers of a non-empty RLE string: int64 [2K] (start, length, ...)."""
    if rle.isascii() and not rle.encode("ascii").translate(None, _PLAIN):
        values = np.fromstring(rle, dtype=np.int64, sep=" ")  # digits and spaces only: cannot fail
        _check_even(values.size, suffix)
        return values
    tokens = rle.split()
    _check_even(len(tokens), suffix)
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not _is_int(t))
        raise RLEError(f"non-integer token {bad!r}{suffix}") from None
    except OverflowError:
        raise RLEError(f"integer token out of range{suffix}") from None


def _raise_first_problem(starts: np.ndarray, lengths: np.ndarray, shape, suffix: str) -> None:
    """Raise RLEError for the first invalid run (1-indexed ``starts``)."""
    n_pixels = int(shape[0]) * int(shape[1])
    if (bad := np.flatnonzero(starts < 1)).size:
        raise RLEError(f"start {starts[bad[0]]} < 1 in pair {bad[0]} (pixels are numbered from 1){suffix}")
    if (bad := np.flatnonzero(lengths < 1)).size:
        raise RLEError(f"length {lengths[bad[0]]} < 1 in pair {bad[0]}{suffix}")
    if (bad := np.flatnonzero(lengths > n_pixels + 1 - starts)).size:  # end > n_pixels, without overflow
        i = bad[0]
        raise RLEError(
            f"run {starts[i]}+{lengths[i]} ends at pixel {int(starts[i]) + int(lengths[i]) - 1}, past the end of a "
            f"{shape[0]}x{shape[1]} image ({n_pixels} pixels){suffix}"
        )
    ends = starts + lengths - 1  # 1-indexed, inclusive
    i = np.flatnonzero(starts[1:] <= ends[:-1])[0]
    kind = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
    raise RLEError(f"{kind} runs: pair {i + 1} starts at {starts[i + 1]}, pair {i} covers {starts[i]}..{ends[i]}{suffix}")


def _run_bounds(rle, shape, where: str | None) -> np.ndarray:
    """Validated run boundaries, int64 [2K + 2]: ``[0, s_1, e_1, ..., s_K, e_K, H*W]``
    with 0-indexed starts ``s`` and exclusive ends ``e`` in column-major order."""
    n_pixels = int(shape[0]) * int(shape[1])
    if _is_empty(rle):
        return np.array([0, n_pixels], np.int64)
    suffix = f" ({where})" if where else ""
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}{suffix}")
    values = _parse_values(rle, suffix)
    bounds = np.empty(values.size + 2, np.int64)
    bounds[0], bounds[-1], bounds[1:-1] = 0, n_pixels, values
    bounds[1:-1:2] -= 1
    bounds[2:-1:2] += bounds[1:-1:2]
    counts = np.diff(bounds)  # gap, length, gap, ..., length, gap
    if values.max() > n_pixels or counts.min() < 0 or counts[1::2].min() < 1:
        _raise_first_problem(values[0::2], values[1::2], shape, suffix)
    return bounds


def parse_runs(rle, shape=STRIP_SHAPE, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string and return ``(starts, lengths)`` as int64 arrays,
    starts 0-indexed into the column-major flattened mask.

    Raises RLEError naming the problem (and ``where``, e.g. "train.csv row 12").
    """
    bounds = _run_bounds(rle, shape, where)
    starts = bounds[1:-1:2]
    return starts, bounds[2:-1:2] - starts


def rle_decode(rle, shape=STRIP_SHAPE, where: str | None = None) -> np.ndarray:
    """Decode an RLE string to a C-contiguous uint8 mask [H, W] with values in {0, 1}.

    ``shape`` is (H, W); ``where`` names the source for error messages.
    """
    counts = np.diff(_run_bounds(rle, shape, where))
    column_major = np.repeat((np.arange(counts.size) & 1).astype(np.uint8), counts)
    return cv2.transpose(column_major.reshape(int(shape[1]), int(shape[0])))


def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask [H, W] (any dtype; nonzero is foreground) to the canonical
    RLE string: sorted, maximal runs, '' for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask [H, W], got shape {mask.shape}")
    padded = np.zeros(mask.size + 2, np.uint8)  # a background pixel before and after
    padded[1:-1] = cv2.transpose((np.asarray(mask) != 0).view(np.uint8)).reshape(-1)
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
