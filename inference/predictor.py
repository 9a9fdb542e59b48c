"""Prediction on a folder of strips: the library behind predict.py.

``Predictor`` turns a batch of whole images into per-class probabilities,
tiled (or whole-frame), with optional flip TTA, averaged over several models
(e.g. cross-validation folds). ``predict_folder`` streams a folder through
it: DataLoader workers read images ahead (``ImageFolder``), consecutive
images of one size are batched (``same_size_groups``), and each image's
outputs are written as soon as it is done (``ResultWriter``), followed by a
line in a per-rank journal. The submission is written at the end from the
journals, so memory holds RLE strings only and an interrupted run resumes
where it stopped.

``predict_probs_files`` runs the same loop (workers, batches, shards) for a
list of images and writes probabilities only, ``<stem>.npz`` each: the
out-of-fold predictions of cross-validation.

Output folder (shared by every rank: one machine, or a shared file system):
- ``submission.csv``: every finished image x class 1..4, each class's
  post-processed mask as is (classes are scored independently, so overlaps
  are kept); unreadable images are left out;
- ``masks/<stem>.png``: uint8 [H, W] class ids 0..4 (where post-processed
  masks overlap, the class with the higher probability);
- ``image_scores.csv``: image-level scores per class (``inference/image_scores.py``);
- for an anomaly model (``anomaly_map``), ``anomaly/<stem>.png`` (uint16 map)
  and ``anomaly_scores.csv`` (``ImageId,score``);
- ``probs/<stem>.npz`` (``save_probs``), ``overlays/<stem>.jpg`` (``overlays``;
  for a model with ``intermediate_maps``, the pipeline's steps below the strip);
- ``skipped.txt``: unreadable images, one ``name<TAB>error`` per line (only
  when there are some);
- ``.journal/rank<r>.jsonl``: one JSON object per image and line,
  ``{"image", "rles": [4 RLE strings, class 1..4], "shape": [H, W], "scores":
  [4 image-level scores]}`` (plus ``"anomaly_score"`` for an anomaly model) or
  ``{"image", "error"}``; the last line about an image wins.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.classes import CLASS_IDS
from core.config import Config, ConfigError, PredictConfig, load_config, to_dict
from core.distributed import DistInfo, broadcast_object, gather_objects
from core.files import atomic_write_text
from core.precision import resolve_amp
from core.progress import progress
from datasets.io import ImageReadError, read_image, to_tensor
from datasets.rle import rle_encode
from datasets.severstal import RERELEASED, list_images, write_mask_csv
from models import load_model
from models.anomaly_score import grey_of

from .gradcam import cam_panel, grad_cam
from .image_scores import ANOMALY_DIR, ANOMALY_SCORES, IMAGE_SCORES, class_scores, write_anomaly_png, write_scores_csv
from .postprocess import PostProcess, probs_path, save_probs
from .tiling import TTA_FLIPS, ModelFn, predict_full_frame, predict_tiled, tile_starts, with_tta
from .visualize import maps_panel, overlay_panel, to_bgr_uint8, write_image

JOURNAL_DIR = ".journal"
SUBMISSION = "submission.csv"
SKIPPED = "skipped.txt"


# ---------------------------------------------------------------- models


def load_models(paths: Sequence, overrides: Sequence[str] = (), device="cpu") -> tuple[list[nn.Module], Config]:
    """Eval-mode models from checkpoints, and the config: the first
    checkpoint's stored config with ``overrides`` (``--section.key=value``)
    on top. The overrides are checked before the other checkpoints load."""
    first, stored = load_model(paths[0], device)
    cfg = load_config(base=to_dict(stored), overrides=overrides)
    return [first] + [load_model(path, device)[0] for path in paths[1:]], cfg


def has_class_head(model: nn.Module) -> bool:
    """Whether ``model.class_probs(images)`` is available (docs/CONTRACTS.md).
    smp models built without a head have the method but say so in
    ``has_classification_head``."""
    return hasattr(model, "class_probs") and getattr(model, "has_classification_head", True)


class Predictor:
    """Per-class probabilities of whole images from one or more eval-mode
    models, averaged as probabilities.

    ``cfg`` (PredictConfig) picks tiles of ``tile`` at ``stride`` blended by
    ``blend`` (or whole frames with ``full_frame``), ``batch_size`` tiles per
    forward, flip TTA, autocast (``amp``) and channels_last.
    """

    def __init__(self, models: Sequence[nn.Module], cfg: PredictConfig, device="cpu"):
        if not models:
            raise ValueError("Predictor needs at least one model")
        self.cfg, self.device = cfg, torch.device(device)
        memory = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.models = [m.to(self.device, memory_format=memory).eval() for m in models]
        self.class_models = [m for m in self.models if has_class_head(m)]
        self.precision = resolve_amp(cfg.amp, self.device, key="predict.amp")
        self.autocast = self.precision.autocast
        self.anomaly = all(getattr(m, "anomaly_map", False) for m in self.models)  # probs are anomaly maps
        # the strip's anomaly score from its map and grey image: the first model's statistic
        self.anomaly_score = getattr(self.models[0], "image_score", None) if self.anomaly else None
        self.explained = next((m for m in self.models if hasattr(m, "intermediate_maps")), None)

    @property
    def has_class_probs(self) -> bool:
        return bool(self.class_models)

    def images_per_call(self, height: int, width: int) -> int:
        """Images of this size per ``predict_probs`` call: ceil(batch_size /
        tiles per image), at least 1. In full-frame mode an image counts as
        the tiles that would cover it, so memory per call stays comparable."""
        tile, stride = self.cfg.tile, self.cfg.stride
        rows = len(tile_starts(max(height, tile), tile, stride))
        cols = len(tile_starts(max(width, tile), tile, stride))
        return max(1, math.ceil(self.cfg.batch_size / (rows * cols)))

    @torch.inference_mode()
    def predict_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images: float32 [B, 3, H, W] in [0, 1], any H, W.

        Returns (probs float32 [B, 4, H, W] in [0, 1], class_probs float32
        [B, 4] in [0, 1] or None), on the CPU: the mean over the models
        (class_probs: over those with a classification head, computed on the
        whole image and averaged over the same flips as the masks; None when
        no model has one).
        """
        images = images.to(self.device, non_blocking=True)
        probs = sum(self._probs(model, images) for model in self.models) / len(self.models)
        if not self.class_models:
            return probs.cpu(), None
        class_probs = sum(self._class_probs(model, images) for model in self.class_models) / len(self.class_models)
        return probs.cpu(), class_probs.cpu()

    def class_activation_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of the classification heads, averaged over the models that
        have one: float32 [B, 4, H, W] in [0, 1], on the CPU."""
        if not self.class_models:
            raise ConfigError("--gradcam needs a model with a classification head (model.smp.classification_head)")
        images = images.to(self.device)
        return (sum(grad_cam(model, images) for model in self.class_models) / len(self.class_models)).cpu()

    def intermediate_maps(self, images: torch.Tensor) -> list[dict[str, np.ndarray]] | None:
        """The steps of the first model's pipeline that can show them, per image
        (name -> float32 [H, W] in [0, 1]); None when no model can."""
        if self.explained is None:
            return None
        return [self.explained.intermediate_maps(image) for image in images]

    def _probs(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        model_fn = with_tta(self._forward(model), self.cfg.tta)
        if self.cfg.full_frame:
            return predict_full_frame(model_fn, images)
        c = self.cfg
        return predict_tiled(model_fn, images, c.tile, c.stride, c.blend, c.batch_size, c.sigma_scale)

    def _forward(self, model: nn.Module) -> ModelFn:
        def forward(images: torch.Tensor) -> torch.Tensor:
            if self.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                return model(images).float()
        return forward

    def _class_probs(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            flipped = [model.class_probs(images.flip(dims)).float() for dims in TTA_FLIPS[self.cfg.tta]]
        return torch.stack(flipped).mean(0)


# ---------------------------------------------------------------- reading


class ImageFolder(Dataset):
    """Images of ``folder`` named by ``names``. Item i is ``(name, float32
    [3, H, W] in [0, 1])``, or ``(name, ImageReadError)`` for a file that
    cannot be read, so one bad file does not stop a DataLoader."""

    def __init__(self, folder, names: Sequence[str]):
        self.folder, self.names = Path(folder), list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | ImageReadError]:
        name = self.names[index]
        try:
            return name, to_tensor(read_image(self.folder / name))
        except ImageReadError as error:
            return name, error


def same_size_groups(items: Iterable[tuple[str, torch.Tensor]],
                     images_per_call: Callable[[int, int], int]) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Consecutive images of one size, stacked: ``(names, float32 [n, 3, H,
    W])`` with n <= images_per_call(H, W), in the order of ``items``
    (``(name, float32 [3, H, W])`` pairs)."""
    names, images = [], []
    for name, image in items:
        if images and (image.shape != images[0].shape or len(images) >= images_per_call(*image.shape[-2:])):
            yield names, torch.stack(images)
            names, images = [], []
        names.append(name)
        images.append(image)
    if images:
        yield names, torch.stack(images)


# ---------------------------------------------------------------- writing


class Journal:
    """An append-only JSON-lines file, flushed after every record."""

    def __init__(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        self.file = path.open("a+b")  # writes go to the end wherever reads left the position
        if size:
            self.file.seek(size - 1)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")  # a crash mid-line: the next record starts a line of its own

    def append(self, record: dict) -> None:
        self.file.write(json.dumps(record).encode() + b"\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_journals(folder) -> dict[str, dict]:
    """The last record about each image over every ``rank*.jsonl`` in
    ``folder`` (torn lines of a crashed run are ignored)."""
    records: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["image"]] = record
    return records


def class_map(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """masks: uint8 [4, H, W] in {0, 1}; probs: float [4, H, W]. Returns
    uint8 [H, W]: 0 where no mask is on, else the class id (1..4) of the mask
    with the highest probability among those on at that pixel."""
    scores = np.where(masks > 0, probs, -1.0)
    return np.where(masks.any(0), scores.argmax(0) + 1, 0).astype(np.uint8)


def anomaly_outputs(probs: torch.Tensor, image: torch.Tensor, anomaly_score=None) -> tuple[np.ndarray, float]:
    """An anomaly model's map (float [H, W], its first channel) and the
    strip's score: ``anomaly_score(map, grey)`` where the model has one
    (``Predictor.anomaly_score``), else the map's maximum; rounded as written."""
    anomaly = probs[0].numpy()
    if anomaly_score is None:
        return anomaly, round(float(anomaly.max()), 6)
    return anomaly, round(float(anomaly_score(anomaly, grey_of(image.permute(1, 2, 0).numpy() * 255))), 6)


class ResultWriter:
    """Post-processes one image and writes its outputs under ``out_dir``
    (masks always, probs and overlays when asked), then its journal record:
    a record means every file of that image is complete."""

    def __init__(self, out_dir, postprocess: PostProcess, journal: Journal,
                 save_probs: bool = False, overlays: bool = False, gradcam: bool = False, anomaly: bool = False,
                 anomaly_score=None):
        """``anomaly``: probs are anomaly maps; ``anomaly_score(map, grey) ->
        float`` scores a strip (None: the map's maximum)."""
        self.out_dir, self.postprocess, self.journal = Path(out_dir), postprocess, journal
        self.save_probs, self.overlays, self.gradcam, self.anomaly = save_probs, overlays, gradcam, anomaly
        self.anomaly_score = anomaly_score

    def write(self, name: str, image: torch.Tensor, probs: torch.Tensor, class_probs: torch.Tensor | None,
              cams: torch.Tensor | None = None, maps: dict[str, np.ndarray] | None = None) -> None:
        """image: float32 [3, H, W] in [0, 1]; probs: float32 [4, H, W] in
        [0, 1]; class_probs: float32 [4] or None; cams: Grad-CAM float32
        [4, H, W] or None; maps: the model's intermediate maps (drawn below
        the overlay) or None."""
        masks = self.postprocess(probs, class_probs)
        stem = Path(name).stem
        write_image(self.out_dir / "masks" / f"{stem}.png", class_map(masks, probs.numpy()))
        if self.save_probs:
            save_probs(probs_path(self.out_dir / "probs", name), probs, class_probs)
        if self.overlays:
            overlay = overlay_panel(to_bgr_uint8(image), masks, title=name)
            if maps:
                overlay = np.concatenate([overlay, maps_panel(maps)], axis=0)
            write_image(self.out_dir / "overlays" / f"{stem}.jpg", overlay)
        if cams is not None:
            panel = cam_panel(to_bgr_uint8(image), cams.numpy(), class_probs.numpy())
            write_image(self.out_dir / "gradcam" / f"{stem}.jpg", panel)
        record = {"image": name, "rles": [rle_encode(m) for m in masks], "shape": list(masks.shape[1:]),
                  "scores": class_scores(probs, class_probs)}
        if self.anomaly:
            anomaly, record["anomaly_score"] = anomaly_outputs(probs, image, self.anomaly_score)
            write_anomaly_png(self.out_dir / ANOMALY_DIR / f"{stem}.png", anomaly)
        self.journal.append(record)

    def skip(self, name: str, error: Exception) -> None:
        self.journal.append({"image": name, "error": str(error)})


class ProbsWriter:
    """Writes each image's probabilities to ``out_dir/<stem>.npz``
    (``save_probs``; the file appears whole or not at all, so it marks the
    image done). An unreadable image stops the run with its error."""

    gradcam = overlays = False

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def write(self, name: str, image: torch.Tensor, probs: torch.Tensor, class_probs: torch.Tensor | None,
              cams: torch.Tensor | None = None, maps: dict | None = None) -> None:
        """probs: float32 [4, H, W] in [0, 1]; class_probs: float32 [4] or None."""
        save_probs(probs_path(self.out_dir, name), probs, class_probs)

    def skip(self, name: str, error: Exception) -> None:
        raise error


# ---------------------------------------------------------------- the run


@dataclass
class RunSummary:
    submission: Path
    n_images: int  # images in the folder
    n_written: int  # images in the submission
    n_predicted: int  # images predicted by this run (the rest were done before --resume)
    skipped: dict[str, str]  # unreadable image -> why


def predict_folder(predictor: Predictor, postprocess: PostProcess, image_dir, out_dir, dist_info: DistInfo, *,
                   layout: str = RERELEASED, save_probs: bool = False, overlays: bool = False,
                   gradcam: bool = False, resume: bool = False) -> RunSummary:
    """Predict every image of ``image_dir`` into ``out_dir`` (see the module
    docstring for the files), images sharded over ranks. ``resume`` keeps
    the journals of an earlier run and predicts only the images it did not
    finish; otherwise they are discarded. ``layout`` is the submission's
    (datasets.severstal.RERELEASED or COMPETITION). Every rank returns rank
    0's summary."""
    out_dir, journal_dir = Path(out_dir), Path(out_dir) / JOURNAL_DIR
    names = _listing(image_dir)
    if any(postprocess.gate) and not predictor.has_class_probs:
        raise ConfigError(f"postprocess.gate={postprocess.gate} needs a model with a classification head")
    if gradcam and not predictor.has_class_probs:
        raise ConfigError("--gradcam needs a model with a classification head (model.smp.classification_head)")
    todo = broadcast_object(todo_images(names, journal_dir, resume) if dist_info.is_main else None)
    with Journal(journal_dir / f"rank{dist_info.rank}.jsonl") as journal:
        writer = ResultWriter(out_dir, postprocess, journal, save_probs, overlays, gradcam, predictor.anomaly,
                              predictor.anomaly_score)
        n_predicted = _predict_images(predictor, ImageFolder(image_dir, shard(todo, dist_info)), writer,
                                      dist_info.is_main)
    n_predicted = sum(gather_objects(n_predicted))  # a collective: past it, every rank's journal is closed
    summary = write_submission(out_dir, names, layout, n_predicted) if dist_info.is_main else None
    return broadcast_object(summary)


def predict_probs_files(predictor: Predictor, image_dir, names: Sequence[str], out_dir,
                        dist_info: DistInfo) -> int:
    """Predict the images ``names`` of ``image_dir`` into ``out_dir/<stem>.npz``
    (``save_probs``: probs float16 [4, H, W], class_probs float32 [4] when
    the models have a head), batched and sharded over ranks as
    ``predict_folder`` does; every rank passes the same ``names`` (e.g. from
    ``missing_probs``). An unreadable image raises its ImageReadError. Returns
    how many images every rank together predicted; a collective: when it
    returns, every rank's files are written."""
    check_stems(names, image_dir)
    n_predicted = _predict_images(predictor, ImageFolder(image_dir, shard(names, dist_info)), ProbsWriter(out_dir),
                                  dist_info.is_main)
    return sum(gather_objects(n_predicted))


def missing_probs(out_dir, names: Sequence[str], dist_info: DistInfo) -> list[str]:
    """The images of ``names``, in order, with no ``out_dir/<stem>.npz`` yet:
    rank 0's view, on every rank, so that every rank shards the same list."""
    missing = [name for name in names if not probs_path(out_dir, name).is_file()] if dist_info.is_main else None
    return broadcast_object(missing)


def shard(names: Sequence[str], dist_info: DistInfo) -> list[str]:
    """This rank's share of ``names``: every world_size-th, from its rank."""
    return list(names[dist_info.rank :: dist_info.world_size])


def _listing(image_dir) -> list[str]:
    """The images of ``image_dir``, sorted, with distinct stems."""
    names = list_images(image_dir)
    if not names:
        raise FileNotFoundError(f"no images in {image_dir}")
    check_stems(names, image_dir)
    return names


def check_stems(names: Sequence[str], image_dir) -> None:
    """Raise ValueError naming the shared stems: an image's stem names its output files, so they must differ."""
    shared = [stem for stem, n in Counter(Path(name).stem for name in names).items() if n > 1]
    if shared:
        raise ValueError(f"images in {image_dir} share the file stems {shared[:4]}, which name their outputs")


def todo_images(names: list[str], journal_dir: Path, resume: bool) -> list[str]:
    """The images still to predict; without ``resume``, the journals are discarded first."""
    if not resume:
        shutil.rmtree(journal_dir, ignore_errors=True)
        return names
    done = {name for name, record in read_journals(journal_dir).items() if "rles" in record}
    return [name for name in names if name not in done]


def _predict_images(predictor: Predictor, dataset: ImageFolder, writer: ResultWriter, show: bool) -> int:
    """Predict and write every readable image of ``dataset``; returns how many."""
    loader = DataLoader(dataset, batch_size=None, num_workers=predictor.cfg.num_workers)
    items = progress(loader, show, total=len(dataset), desc="predict", unit="img")
    n_done = 0
    for names, images in same_size_groups(_readable(items, writer), predictor.images_per_call):
        probs, class_probs = predictor.predict_probs(images)
        cams = predictor.class_activation_maps(images) if writer.gradcam else None
        maps = predictor.intermediate_maps(images) if writer.overlays else None
        for i, name in enumerate(names):
            writer.write(name, images[i], probs[i], None if class_probs is None else class_probs[i],
                         None if cams is None else cams[i], None if maps is None else maps[i])
        n_done += len(names)
    return n_done


def _readable(items, writer: ResultWriter) -> Iterator[tuple[str, torch.Tensor]]:
    """The images of ``items`` that could be read; the others are recorded as skipped."""
    for name, item in items:
        if isinstance(item, ImageReadError):
            writer.skip(name, item)
        else:
            yield name, item


def write_submission(out_dir: Path, names: list[str], layout: str, n_predicted: int) -> RunSummary:
    """submission.csv (finished images of ``names``, in order) and skipped.txt, from the journals."""
    records = read_journals(out_dir / JOURNAL_DIR)
    finished = [n for n in names if "rles" in records.get(n, {})]
    rles = {n: dict(zip(CLASS_IDS, records[n]["rles"])) for n in finished}
    write_mask_csv(out_dir / SUBMISSION, rles, layout, image_ids=finished, submission=True)
    _write_image_scores(out_dir, finished, records)
    skipped = {n: records[n]["error"] for n in names if "error" in records.get(n, {})}
    if skipped:
        atomic_write_text(out_dir / SKIPPED, "".join(f"{n}\t{e}\n" for n, e in skipped.items()))
    else:
        (out_dir / SKIPPED).unlink(missing_ok=True)
    return RunSummary(out_dir / SUBMISSION, len(names), len(finished), n_predicted, skipped)


def _write_image_scores(out_dir: Path, finished: list[str], records: dict[str, dict]) -> None:
    """image_scores.csv and, for an anomaly model, anomaly_scores.csv, from the journals' records."""
    scored = [n for n in finished if "scores" in records[n]]
    write_scores_csv(out_dir / IMAGE_SCORES, {n: records[n]["scores"] for n in scored}, per_class=True)
    anomalous = [n for n in finished if "anomaly_score" in records[n]]
    if anomalous:
        write_scores_csv(out_dir / ANOMALY_SCORES, {n: [records[n]["anomaly_score"]] for n in anomalous},
                         per_class=False)
