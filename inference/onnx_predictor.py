"""Prediction from an exported file (scripts/export.py) through ONNX Runtime.

``OnnxPredictor`` is a ``Predictor``: the same tiler, blend, flip TTA and
whole-image class probabilities, with the graph (which already averages its
source checkpoints) in place of the eager models, so predict.py, serve.py
and ``predict_folder`` use it unchanged. The config, predict settings and
tuned post-processing come from the file's metadata; ``--predict.*`` and
``--postprocess.*`` overrides apply on top, as for a checkpoint.

Providers: CPUExecutionProvider; on a CUDA device, CUDAExecutionProvider
when onnxruntime-gpu provides it (untested here: no GPU), else an error.
Precision is the graph's float32 (or int8 weights of scripts/quantize.py):
``predict.amp`` does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch

from core.config import Config, ConfigError, PredictConfig, load_config
from core.precision import Precision

from .onnx_export import CLASS_INPUT, INPUT, read_metadata
from .predictor import Predictor
from .tiling import TTA_FLIPS, ModelFn

DUMMY = np.zeros((1, 3, 32, 32), np.float32)  # fed to the input whose output is not needed


def is_onnx(path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime's providers for ``device``: CUDA (then CPU) on a GPU,
    when onnxruntime-gpu is installed; CPU otherwise."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
                          f"(it has {ort.get_available_providers()}); pip install onnxruntime-gpu, or --device cpu")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class OnnxPredictor(Predictor):
    """Per-class probabilities of whole images from an exported graph; the
    interface of ``Predictor`` (``predict_probs``, ``images_per_call``,
    ``has_class_probs``, ``cfg``, ``device``, ``precision``). Grad-CAM needs
    the eager model and is refused."""

    def __init__(self, path, cfg: PredictConfig, device="cpu", threads: int | None = None):
        self.cfg, self.device, self.path = cfg, torch.device(device), Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # torch's knob (OMP_NUM_THREADS) rules
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(self.device))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.models = [self.session]
        self.class_models = [self.session] if CLASS_INPUT in self.inputs else []
        # only smp segmentation models export (inference/onnx_export.py): no anomaly
        # maps, no classical pipeline's intermediate maps to draw
        self.anomaly, self.anomaly_score, self.explained = False, None, None
        provider = self.session.get_providers()[0]
        self.precision = Precision("off", cfg.amp, f"ONNX Runtime {ort.__version__}, {provider}: the graph's own "
                                   "precision (predict.amp does not apply)", str(self.device))

    def class_activation_maps(self, images: torch.Tensor) -> torch.Tensor:
        raise ConfigError("--gradcam needs the eager model: pass the .pt checkpoint, not the .onnx file")

    def _run(self, output: int, images: torch.Tensor) -> torch.Tensor:
        """One graph output (0: probs, 1: class_probs) for ``images`` float32 [B, 3, H, W]."""
        feeds = {INPUT: np.ascontiguousarray(images.cpu().numpy(), dtype=np.float32)}
        if self.class_models:
            feeds[CLASS_INPUT] = DUMMY
            if output == 1:
                feeds = {INPUT: DUMMY, CLASS_INPUT: feeds[INPUT]}
        return torch.from_numpy(self.session.run(None, feeds)[output]).to(self.device)

    def _forward(self, model) -> ModelFn:
        return lambda images: self._run(0, images)

    def _class_probs(self, model, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._run(1, images.flip(dims)) for dims in TTA_FLIPS[self.cfg.tta]]).mean(0)


def load_onnx_predictor(path, overrides: Sequence[str] = (), device="cpu") -> tuple[OnnxPredictor, Config]:
    """The predictor of an exported file and its config: the one stored in
    the file (post-processing: what was tuned, or chosen at export) with
    ``overrides`` on top."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    cfg = load_config(base=read_metadata(path)["config"], overrides=overrides)
    return OnnxPredictor(path, cfg.predict, device), cfg
