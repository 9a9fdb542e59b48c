"""Reading images from disk and turning them into model inputs.

``cv2.imread`` returns None for a missing or undecodable file and decodes a
truncated JPEG without complaint (grey fill, a warning on stderr), so
``read_image`` reads the bytes itself and checks each of these cases.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

JPEG_START = b"\xff\xd8"  # SOI marker
JPEG_SCAN = b"\xff\xda"  # SOS marker: entropy-coded data follows
JPEG_END = b"\xff\xd9"  # EOI marker


class ImageReadError(OSError):
    """An image file that is missing, empty, corrupt, truncated or unreadable;
    the message names the file."""


def read_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3].

    Grey images are replicated to 3 channels and an alpha channel is dropped
    (cv2.IMREAD_COLOR). Raises ImageReadError naming ``path`` for a missing,
    zero-byte, corrupt, truncated-JPEG or unreadable file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"cannot read image {path}: {error.strerror or error}") from error
    return decode_image(data, str(path))


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) as RGB uint8 [H, W, 3], as
    ``read_image`` does for a file. ``source`` names the bytes in errors
    (a path, a request); raises ImageReadError for empty, corrupt,
    truncated-JPEG or undecodable data."""
    if not data:
        raise ImageReadError(f"image file is empty (0 bytes): {source}")
    if data.startswith(JPEG_START) and _truncated_jpeg(data):
        raise ImageReadError(f"truncated JPEG (no end-of-image marker after the last scan): {source}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"cannot decode image (corrupt or not an image, {len(data)} bytes): {source}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _truncated_jpeg(data: bytes) -> bool:
    """True when no end-of-image marker follows the last scan (markers cannot
    occur inside entropy-coded data; searching from the end is fast)."""
    end = data.rfind(JPEG_END)
    return end < 0 or data.find(JPEG_SCAN, end) >= 0


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> contiguous float32 [3, H, W] in [0, 1] (value / 255)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_tensor expects uint8 [H, W, 3], got {image.dtype} {image.shape}")
    # numpy, not torch ops: torch's intra-op threads are slower than one numpy pass on small CPUs.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw /= 255
    return torch.from_numpy(chw)
