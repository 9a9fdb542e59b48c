"""Checkpoints to one self-contained ONNX file, checked against eager PyTorch.

The graph maps ``images`` float32 [B, 3, H, W] in [0, 1] (B, H and W
dynamic; smp models need H and W divisible by 32) to ``probs`` float32
[B, 4, H, W] in [0, 1], the mean over the exported models. When any model
has a classification head, a second input ``class_images`` float32
[B', 3, H', W'] gives ``class_probs`` float32 [B', 4] in [0, 1], the mean
over those with one: predict.py reads masks from tiles and class
probabilities from whole strips, and ONNX Runtime runs every node of a graph
whatever outputs are asked for, so the two take separate inputs (feed a
small dummy, e.g. zeros [1, 3, 32, 32], to the one not needed). Normalisation is inside the graph, as it is
inside the models (docs/CONTRACTS.md). Several checkpoints (cross-validation
folds) become one graph that averages them.

The file holds its weights (no external data file) and, in its metadata
(``metadata_props``, every value JSON), all a predictor needs: see
``METADATA_KEYS``. ``inference.onnx_predictor`` reads it back.

Parity is never skipped: before the file is written, ONNX Runtime runs the
serialised graph on a real tile (batch 2: the tile and its mirror image, so
the dynamic batch axis is exercised) and on a whole strip, and the export is
refused when a probability differs from eager PyTorch by more than
``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from core.classes import CLASS_IDS
from core.config import Config, ConfigError, to_dict
from core.files import atomic_path
from datasets.io import read_image, to_tensor
from datasets.severstal import list_images

from .postprocess import choose_postprocess
from .predictor import has_class_head, load_models

PARITY_TOLERANCE = 1e-3  # max abs difference of a probability, ONNX Runtime against eager PyTorch
DEFAULT_OPSET = 18
INPUT, CLASS_INPUT = "images", "class_images"
OUTPUTS = ("probs", "class_probs")
# metadata_props keys, each value a JSON document
METADATA_KEYS = {
    "severstal.format": "format version of this metadata (int)",
    "severstal.class_ids": "class id of each output channel, [1, 2, 3, 4]",
    "severstal.io": "input and output names, shapes, dtypes and ranges",
    "severstal.normalisation": "what the graph does to its input (mean, std), so callers feed [0, 1]",
    "severstal.predict": "tile, stride, blend, sigma_scale, tta, batch_size: how the graph is run over a strip",
    "severstal.postprocess": "the post-processing to apply (tuned), and where it came from",
    "severstal.config": "the resolved config of the first checkpoint, as nested dicts",
    "severstal.sources": "each source checkpoint's path and sha256",
    "severstal.parity": "max abs differences ONNX Runtime - eager measured at export",
}
FORMAT_VERSION = 1


class ExportRefused(RuntimeError):
    """The model could not be exported faithfully; the message says why."""


class AveragedModel(nn.Module):
    """Eval-mode models averaged as ``inference.predictor.Predictor`` averages
    them: ``forward(images, class_images) -> (probs, class_probs)``, or
    ``forward(images) -> (probs,)`` when no model has a classification head."""

    def __init__(self, models: Sequence[nn.Module], class_models: Sequence[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.class_indices = [i for i, m in enumerate(models) if any(m is c for c in class_models)]

    @property
    def has_class_probs(self) -> bool:
        return bool(self.class_indices)

    def forward(self, images: Tensor, class_images: Tensor | None = None) -> tuple[Tensor, ...]:
        probs = sum(m(images) for m in self.models) / len(self.models)
        if not self.class_indices:
            return (probs,)
        class_probs = sum(self.models[i].class_probs(class_images) for i in self.class_indices)
        return probs, class_probs / len(self.class_indices)

    def example_inputs(self, images: Tensor, class_images: Tensor | None = None) -> tuple[Tensor, ...]:
        """The graph's inputs: ``images``, and ``class_images`` (default
        ``images``) when there is a classification head."""
        if not self.class_indices:
            return (images,)
        return images, images if class_images is None else class_images


@dataclass
class ExportResult:
    path: Path
    parity: dict[str, float]  # input name -> max abs difference of probabilities (and class probs)
    exporter: str
    n_bytes: int


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model: AveragedModel, cfg: Config, sources: Sequence, postprocess: dict, postprocess_origin: str,
                strip: Tensor, out, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export ``model`` to ``out`` with its metadata, after the parity check.

    ``strip``: float32 [3, H, W] in [0, 1], a real image (H, W >= the tile);
    the tile is its top-left ``cfg.predict.tile`` square. ``postprocess``:
    the PostProcess fields to store. Mask R-CNN (``target_kind ==
    "instance"``) goes through the TorchScript-based exporter (torch.export
    stops at torchvision's batched_nms); smp models through torch.export.
    Raises ExportRefused when the exporter fails or parity does not hold;
    nothing is written then.
    """
    instance = any(getattr(m, "target_kind", "") == "instance" for m in model.models)
    exporter = "torchscript" if instance else "dynamo"
    model = model.eval()
    tile = cfg.predict.tile
    sample = strip[None, :, :tile, :tile]
    example = torch.cat([sample, sample.flip(-1)])
    try:
        # the two inputs' example shapes differ, or torch.export ties their dimensions together
        proto = _export(model, model.example_inputs(example, strip[None]), opset, dynamo=not instance)
    except Exception as error:  # an exporter failure of any kind is a refusal, with its cause
        what = "Mask R-CNN through the TorchScript-based exporter (dynamo=False)" if instance else "torch.export"
        raise ExportRefused(f"{what} failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from error
    meta = metadata(model, cfg, sources, postprocess, postprocess_origin)
    data = proto.SerializeToString()
    parity = check_parity(model, data, {"tile": model.example_inputs(example, strip[None]),
                                        "strip": model.example_inputs(strip[None], example)})
    meta["severstal.parity"] = json.dumps(parity)
    onnx.helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    return ExportResult(Path(out), parity, exporter, len(data))


def export_checkpoints(checkpoints: Sequence, out, overrides: Sequence[str] = (), sample=None,
                       cv_file: Path | None = None, opset: int = DEFAULT_OPSET) -> ExportResult:
    """``checkpoints`` (averaged) to ``out``, with the post-processing
    predict.py would apply (``--postprocess.*`` in ``overrides``; ``cv_file``:
    a cross-validation's tuned file for its folds) and the predict settings
    of the first checkpoint with ``--predict.*`` overrides. ``sample``: the
    real strip the parity check runs on (default: the first training image
    of the first checkpoint's ``data.root``)."""
    models, cfg = load_models(checkpoints, overrides)
    overridden = [o[len("--postprocess."):].split("=", 1)[0] for o in overrides if o.startswith("--postprocess.")]
    postprocess, origin = choose_postprocess(cfg.postprocess, checkpoints, overridden, cv_file)
    model = AveragedModel(models, [m for m in models if has_class_head(m)])
    strip = to_tensor(read_image(sample or _first_training_image(cfg)))
    if min(strip.shape[-2:]) < cfg.predict.tile:
        raise ConfigError(f"the parity sample {sample} is smaller than predict.tile={cfg.predict.tile}")
    return export_onnx(model, cfg, checkpoints, vars(postprocess), origin, strip, out, opset)


def _first_training_image(cfg: Config) -> Path:
    folder = Path(cfg.data.root) / cfg.data.train_images
    names = list_images(folder) if folder.is_dir() else []
    if not names:
        raise FileNotFoundError(f"no training image in {folder} (the checkpoint's data.root) for the parity check: "
                                "pass --sample STRIP.jpg, a real strip")
    return folder / names[0]


def _export(model: AveragedModel, inputs: tuple[Tensor, ...], opset: int, dynamo: bool) -> onnx.ModelProto:
    """The ONNX graph of ``model`` with every batch and spatial axis dynamic, weights inside."""
    input_names = [INPUT, CLASS_INPUT][:len(inputs)]
    output_names = list(OUTPUTS[:len(inputs)])
    if dynamo:
        dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
        program = torch.onnx.export(model, inputs, input_names=input_names, output_names=output_names,
                                    opset_version=opset, dynamo=True, external_data=False, optimize=True,
                                    verbose=False, dynamic_shapes=[dims] * len(inputs))
        return program.model_proto
    spatial = {0: "batch", 2: "height", 3: "width"}
    axes = {INPUT: spatial, "probs": spatial, CLASS_INPUT: {0: "class_batch", 2: "class_height", 3: "class_width"},
            "class_probs": {0: "class_batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the parity check is what decides
        torch.onnx.export(model, inputs, buffer, input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamo=False,
                          dynamic_axes={k: v for k, v in axes.items() if k in input_names + output_names})
    return onnx.load_model_from_string(buffer.getvalue())


def check_parity(model: AveragedModel, data: bytes, cases: dict[str, tuple[Tensor, ...]],
                 tolerance: float | None = None) -> dict[str, float]:
    """Max abs difference of every output, ONNX Runtime (CPU) on the
    serialised graph ``data`` against eager ``model``, per named case (the
    graph's inputs, float32 [B, 3, H, W] each). Raises ExportRefused above
    ``tolerance`` (default ``PARITY_TOLERANCE``)."""
    tolerance = PARITY_TOLERANCE if tolerance is None else tolerance
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    parity = {}
    for name, feeds in cases.items():
        with torch.inference_mode():
            expected = [t.float().numpy() for t in model(*feeds)]
        shapes = ", ".join("x".join(map(str, t.shape)) for t in feeds)
        try:
            got = session.run(None, {n: t.numpy() for n, t in zip(names, feeds)})
        except Exception as error:  # onnxruntime raises its own types; any failure is a refusal with its cause
            raise ExportRefused(f"ONNX Runtime cannot run the exported graph on the {name} ({shapes}): "
                                f"{str(error).strip()[:400]}{_hint(model)}") from error
        for output, images, want, have in zip(OUTPUTS, feeds, expected, got):
            shape = "x".join(map(str, images.shape))
            if want.shape != have.shape:
                raise ExportRefused(f"{output} on the {name} {shape}: ONNX Runtime gave shape {have.shape}, "
                                    f"eager PyTorch {want.shape}")
            parity[f"{output} on {shape}"] = float(np.abs(want - have).max())
    worst = max(parity, key=parity.get)
    if parity[worst] > tolerance:
        raise ExportRefused(f"parity failed: max |ONNX Runtime - eager| = {parity[worst]:.2e} on {worst} "
                            f"(tolerance {tolerance:g}); all: {_fmt(parity)}")
    return parity


def _hint(model: AveragedModel) -> str:
    if any(getattr(m, "target_kind", "") == "instance" for m in model.models):
        return (". Mask R-CNN: the TorchScript-based exporter traces torchvision's per-image loops (the batch "
                "split into a list, one NMS per image and level) at the example's batch size and detection "
                "counts, so the graph does not generalise; predict with the .pt checkpoint")
    return ""


def metadata(model: AveragedModel, cfg: Config, sources: Sequence, postprocess: dict, origin: str) -> dict[str, str]:
    """The metadata_props of the exported file, each value JSON (``METADATA_KEYS``)."""
    p = cfg.predict
    io_spec = {"input": {"name": INPUT, "shape": ["B", 3, "H", "W"], "dtype": "float32", "range": [0, 1],
                         "layout": "RGB, the JPEG's uint8 / 255"},
               "outputs": [{"name": "probs", "shape": ["B", 4, "H", "W"], "dtype": "float32", "range": [0, 1]}]}
    if model.has_class_probs:
        io_spec["class_input"] = {**io_spec["input"], "name": CLASS_INPUT, "shape": ["B'", 3, "H'", "W'"],
                                  "note": "whole images, as predict.py reads class probabilities"}
        io_spec["outputs"].append({"name": "class_probs", "shape": ["B'", 4], "dtype": "float32", "range": [0, 1]})
    values = {
        "severstal.format": FORMAT_VERSION,
        "severstal.class_ids": list(CLASS_IDS),
        "severstal.io": io_spec,
        "severstal.normalisation": _normalisation(model.models[0]),
        "severstal.predict": {k: getattr(p, k) for k in ("tile", "stride", "blend", "sigma_scale", "tta",
                                                         "full_frame", "batch_size")},
        "severstal.postprocess": {**postprocess, "origin": origin},
        "severstal.config": {**to_dict(cfg), "postprocess": {**postprocess, "file": "", "source": origin}},
        "severstal.sources": [{"path": str(s), "sha256": sha256_of(s)} for s in sources],
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _normalisation(model: nn.Module) -> dict:
    """The mean and std the graph applies to its [0, 1] input: torchvision's
    detection transform's for Mask R-CNN, the model's buffers for smp."""
    transform = getattr(getattr(model, "net", None), "transform", None)
    if transform is not None:
        return {"inside_graph": True, "by": "torchvision GeneralizedRCNNTransform",
                "mean": list(transform.image_mean), "std": list(transform.image_std)}
    return {"inside_graph": True, "by": "(x - mean) / std on the [0, 1] input",
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}


def read_metadata(path) -> dict:
    """The ``severstal.*`` metadata of an exported file, JSON-decoded, keys without the prefix."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "severstal.config" not in props:
        raise ValueError(f"{path}: not a file of scripts/export.py (no severstal.* metadata)")
    return {k.split(".", 1)[1]: json.loads(v) for k, v in props.items() if k.startswith("severstal.")}


def _fmt(parity: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.2e}" for k, v in parity.items())


def format_parity(parity: dict[str, float]) -> str:
    return "\n".join(f"  {k}: max |ORT - eager| = {v:.2e}" for k, v in parity.items())
