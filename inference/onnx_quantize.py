"""Static int8 quantisation of an exported file with ONNX Runtime's tools.

Weights int8 per output channel, activations uint8, scales calibrated
(MinMax) on real training strips: each calibration sample is one strip's
tiles as predict.py cuts them (``inference.tiling``) and, when the graph has
a classification input, the whole strip. The QDQ format lets ONNX Runtime
fuse each quantised convolution into an integer kernel (VNNI on x86 CPUs
that have it). The source file's metadata is copied over, with
``severstal.quantized`` added, so the int8 file is as self-contained as its
source.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import onnx

# isort: off
# This project's `models` package first: importing onnxruntime.quantization appends
# onnxruntime/transformers to the import path, and its `models` folder would otherwise
# shadow ours for every later `import models` (scripts/quantize.py failed on exactly that).
import models  # noqa: F401
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
# isort: on

from core.config import load_config
from core.files import atomic_path
from datasets.io import read_image, to_tensor
from datasets.severstal import list_images

from .onnx_export import CLASS_INPUT, INPUT, read_metadata
from .tiling import tile_starts


class StripTiles(CalibrationDataReader):
    """ONNX Runtime's calibration feeds, one per strip of ``paths``: its tiles
    (float32 [n, 3, tile, tile]) and, with ``class_input``, the strip itself."""

    def __init__(self, paths: list[Path], tile: int, stride: int, class_input: bool):
        self.paths, self.tile, self.stride, self.class_input = paths, tile, stride, class_input
        self.index = 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.paths):
            return None
        image = to_tensor(read_image(self.paths[self.index])).numpy()
        self.index += 1
        height, width = image.shape[1:]
        tiles = np.stack([image[:, y:y + self.tile, x:x + self.tile]
                          for y in tile_starts(height, self.tile, self.stride)
                          for x in tile_starts(width, self.tile, self.stride)])
        feeds = {INPUT: tiles}
        if self.class_input:
            feeds[CLASS_INPUT] = image[None]
        return feeds


def calibration_images(data_root, n_strips: int, seed: int, train_images: str = "train_images") -> list[Path]:
    folder = Path(data_root) / train_images
    names = list_images(folder)
    return [folder / name for name in random.Random(seed).sample(names, min(n_strips, len(names)))]


def quantize_file(source, out, data_root, n_strips: int = 16, seed: int = 0) -> Path:
    """Write the int8 version of the exported file ``source`` to ``out``,
    calibrated on ``n_strips`` strips of ``data_root/<data.train_images>``."""
    meta = read_metadata(source)
    cfg = load_config(base=meta["config"])
    model = onnx.load(str(source))
    class_input = any(i.name == CLASS_INPUT for i in model.graph.input)
    paths = calibration_images(data_root, n_strips, seed, cfg.data.train_images)
    reader = StripTiles(paths, cfg.predict.tile, cfg.predict.stride, class_input)
    with tempfile.TemporaryDirectory() as work:
        pre, quantized_path = Path(work) / "pre.onnx", Path(work) / "int8.onnx"
        # ONNX Runtime's optimiser first: BatchNorm folded into the convolutions, so that each
        # convolution, not a BatchNorm after it, is what gets quantised
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(quantized_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantized = onnx.load(str(quantized_path))
    props = {p.key: p.value for p in model.metadata_props}
    props["severstal.quantized"] = json.dumps({"format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
                                               "calibration": [str(p) for p in paths]})
    onnx.helper.set_model_props(quantized, props)
    with atomic_path(out) as tmp:
        onnx.save(quantized, str(tmp))
    return Path(out)
