"""Tiled inference: square tiles, blended as probabilities.

A strip of 1600x256 is covered by 256x256 tiles at stride 224 (x = 0, 224,
..., 1344: 7 tiles, no padding); the last tile of a row is always flush with
the image's end, so any size >= the tile needs no padding. Each tile's
per-class probabilities are weighted by a map that falls off toward the tile
border, accumulated, and divided by the accumulated weight.

The window positions and the gaussian weights are those of MONAI's
``sliding_window_inference`` (``overlap = 1 - stride / tile``, ``mode="gaussian"``),
so the two agree to float rounding; tests/test_tiling.py pins that.

A ``model_fn`` maps images float32 [n, 3, h, w] in [0, 1] to per-class
probabilities float32 [n, C, h, w] in [0, 1] (after the sigmoid), e.g.
``lambda x: torch.sigmoid(unet(x))`` or an eval-mode model of this project.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

ModelFn = Callable[[torch.Tensor], torch.Tensor]

WEIGHT_FLOOR = 1e-3  # MONAI's floor: border pixels of a gaussian tile never get zero weight
TTA_FLIPS = {
    "none": [()],
    "hflip": [(), (-1,)],
    "hvflip": [(), (-1,), (-2,)],  # identity, horizontal, vertical: the 4th place's 3-flip TTA
}


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length).

    Starts step by ``stride``; the last tile is moved back to end flush at
    ``length`` (1600, 256, 224 -> [0, 224, ..., 1344], 7 tiles; stride 192 -> 8).
    Needs ``length >= tile`` (predict_tiled pads smaller images first) and
    ``0 < stride <= tile``.
    """
    if length < tile:
        raise ValueError(f"length {length} < tile {tile}: pad the image to at least the tile size first")
    if not 0 < stride <= tile:
        raise ValueError(f"stride must be in 1..{tile}, got {stride}")
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_weights(tile: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Per-pixel weights of one tile: float32 [tile, tile], all > 0.

    - ``gaussian``: MONAI's importance map. A separable gaussian centred on
      the tile (coordinates -(tile-1)/2 .. (tile-1)/2), sigma = sigma_scale *
      tile, peak ~1 (not normalised: the blend divides by the summed weights,
      so the scale cancels), floored at 1e-3 so borders keep a little weight.
    - ``pyramid``: distance to the nearest border + 1, over its peak: 1 at
      the centre, linear fall-off to 1/ceil(tile/2) at the border.
    - ``mean``: ones (plain averaging of overlaps).
    """
    if mode == "gaussian":
        sigma = sigma_scale * tile
        x = torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2.0
        g = torch.exp(-(x**2) / (2 * sigma**2))
        return (g[:, None] * g[None, :]).clamp_(min=WEIGHT_FLOOR)
    if mode == "pyramid":
        i = torch.arange(tile)
        d = torch.minimum(i, i.flip(0)) + 1
        return (torch.minimum(d[:, None], d[None, :]) / d.max()).float()
    if mode == "mean":
        return torch.ones(tile, tile)
    raise ValueError(f"unknown blend mode {mode!r}; valid: gaussian, pyramid, mean")


def pad_to(images: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [B, C, H, W] by reflection to at least ``height`` x ``width``.

    The padding is split as MONAI splits it (floor half before, the rest
    after). Reflection needs a pad smaller than the side, so large pads are
    applied as repeated reflections; a side of one pixel is replicated.
    Returns the padded tensor and (top, left), the offset of the original.
    """
    h, w = images.shape[-2:]
    dh, dw = max(height - h, 0), max(width - w, 0)
    pads = [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]  # left, right, top, bottom (F.pad order)
    out = images
    while any(pads):
        cur_h, cur_w = out.shape[-2:]
        step = [min(p, n - 1) for p, n in zip(pads, (cur_w, cur_w, cur_h, cur_h))]
        if not any(step):
            out = F.pad(out, pads, mode="replicate")
            break
        out = F.pad(out, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return out, (dh // 2, dw // 2)


def _weight_sum(weight: torch.Tensor, windows: list[tuple[int, int]], height: int, width: int) -> torch.Tensor:
    """Summed tile weights over the image: float32 [height, width]."""
    tile = weight.shape[-1]
    total = weight.new_zeros(height, width)
    for y, x in windows:
        total[y : y + tile, x : x + tile] += weight
    return total


@torch.inference_mode()
def predict_tiled(model_fn: ModelFn, images: torch.Tensor, tile: int = 256, stride: int = 224,
                  blend: str = "gaussian", batch_size: int = 16, sigma_scale: float = 0.125) -> torch.Tensor:
    """Blended tiled prediction of a batch of images of any size.

    images: float32 [B, 3, H, W] in [0, 1]; images smaller than ``tile`` are
    reflection-padded (``pad_to``) and the result cropped back.
    Tiles of all B images are gathered and passed to ``model_fn``
    ``batch_size`` at a time; ``model_fn`` returns probabilities [n, C, tile,
    tile] (C is taken from it). Returns float32 [B, C, H, W] in [0, 1], on
    the images' device. Tiles are cut and accumulated as slices (whole-tile
    tensor ops); the blend normaliser is computed once for all images.
    """
    b, _, h, w = images.shape
    padded, (top, left) = pad_to(images, tile, tile)
    height, width = padded.shape[-2:]
    windows = [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]
    jobs = [(i, y, x) for i in range(b) for y, x in windows]
    weight = blend_weights(tile, blend, sigma_scale).to(images.device)
    out = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        tiles = torch.stack([padded[i, :, y : y + tile, x : x + tile] for i, y, x in chunk])
        probs = _check_output(model_fn(tiles), tiles)
        if out is None:
            out = images.new_zeros(b, probs.shape[1], height, width, dtype=torch.float32)
        for (i, y, x), p in zip(chunk, probs):
            out[i, :, y : y + tile, x : x + tile].addcmul_(p, weight)
    norm = _weight_sum(weight, windows, height, width)[top : top + h, left : left + w]
    return out[..., top : top + h, left : left + w].div_(norm).contiguous()


@torch.inference_mode()
def predict_full_frame(model_fn: ModelFn, images: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Whole-image prediction, the reference tiling is compared with.

    images: float32 [B, 3, H, W] in [0, 1], reflection-padded to multiples
    of ``multiple`` (U-Net needs 32) and cropped back.
    Returns float32 [B, C, H, W] probabilities in [0, 1].
    """
    h, w = images.shape[-2:]
    padded, (top, left) = pad_to(images, -(-h // multiple) * multiple, -(-w // multiple) * multiple)
    probs = _check_output(model_fn(padded), padded)
    return probs[..., top : top + h, left : left + w].contiguous()


def with_tta(model_fn: ModelFn, mode: str = "none") -> ModelFn:
    """``model_fn`` averaged over flips: the mean of the probabilities.

    ``none``: model_fn itself; ``hflip``: identity and horizontal (width)
    flip; ``hvflip``: identity, horizontal flip and vertical (height) flip,
    the 3-flip TTA of the 4th place (no combined h+v flip). Each flipped
    prediction is flipped back before averaging.
    """
    if mode not in TTA_FLIPS:
        raise ValueError(f"unknown TTA mode {mode!r}; valid: {', '.join(TTA_FLIPS)}")
    flips = TTA_FLIPS[mode]
    if len(flips) == 1:
        return model_fn

    def averaged(images: torch.Tensor) -> torch.Tensor:
        preds = [model_fn(images.flip(dims)).float().flip(dims) for dims in flips]
        return torch.stack(preds).mean(0)

    return averaged


def _check_output(probs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The model output as float32, after checking it matches its input."""
    if probs.ndim != 4 or probs.shape[0] != inputs.shape[0] or probs.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(
            f"model_fn must return [n, C, h, w] for input {tuple(inputs.shape)}, got {tuple(probs.shape)}"
        )
    return probs.float()
