"""Bulk prediction on Ray Data: what ``predict.py --engine ray`` runs.

The same Predictor and post-processing as the plain ``predict.py``, as a
streaming pipeline that Ray schedules over the CPUs and GPUs of a cluster:

    image sources (a folder, a text file of paths or URIs, or a folder URI)
    -> read and decode (any file system pyarrow reads: local, s3://, gs://, hdfs://)
    -> ``PredictWorker`` (a pool of Ray actors, each holding the models: one per GPU, or CPU actors):
       tiled probabilities, post-processing, RLE, the mask PNG and the image-level
       scores of each image (and an anomaly model's map and score)
    -> the driver, which streams the rows back (``iter_batches``) and writes
       ``masks/<stem>.png`` (``anomaly/<stem>.png``) and a journal line per image as it arrives.

GPU actors get their images from Ray tasks, a stage of its own that decodes
while the GPUs predict; CPU actors read their own (``ray.read=auto``): on
CPUs the decode competes with prediction for the same cores anyway, and a
separate stage only adds a copy of every strip through the object store and
the scheduling of its tasks (measured in docs/BENCHMARKS.md).

The outputs are those of the plain run (inference/predictor.py): the
submission, ``skipped.txt``, ``image_scores.csv`` (and an anomaly model's
``anomaly_scores.csv``) are written at the end from the journal, so
the driver holds RLE strings only, never the images or their masks, and
``--resume`` predicts only the images an earlier run (plain or Ray) into the
same folder did not finish.

Fault tolerance is Ray's: an actor that dies (a lost node, a killed process,
an out-of-memory kill) is restarted up to ``ray.max_restarts`` times and the
batches it held are retried up to ``ray.max_task_retries`` times; a failed
read task is retried by Ray Data. Ray is an optional extra (``pip install -e
.[ray]``) imported only here, when the engine is used. With ``ray.address``
empty a local Ray is started on this machine (CPUs ``ray.num_cpus``, an
object store of ``ray.object_store_mb``, no dashboard) and shut down after
the run; ``ray.address=auto`` joins the cluster of ``ray start`` instead,
whose every node needs the project installed and the checkpoints at the
same path (a shared file system); the images only need a URI every node reads.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import cv2
import numpy as np
import torch

from core.classes import CLASS_IDS
from core.config import ConfigError, RayConfig, load_config
from core.files import atomic_path
from core.progress import progress
from datasets.io import ImageReadError, decode_image, read_image, to_tensor
from datasets.rle import rle_encode
from datasets.severstal import IMAGE_SUFFIXES, RERELEASED, list_images
from inference.image_scores import ANOMALY_DIR, class_scores, encode_anomaly_png
from inference.predictor import (
    JOURNAL_DIR,
    Journal,
    RunSummary,
    anomaly_outputs,
    check_stems,
    class_map,
    same_size_groups,
    todo_images,
    write_submission,
)

from .cross_validation import load_predictor

MISSING_RAY = "--engine ray needs Ray Data, an optional extra: pip install -e '.[ray]' (or pip install 'ray[data]')"
EMPTY = np.zeros((0, 0, 3), np.uint8)  # the pixels of an image that could not be read


def import_ray():
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not only the core)
    except ImportError as error:
        raise ConfigError(f"{MISSING_RAY} ({error})") from None
    return ray


def ray_config(overrides: Sequence[str]) -> RayConfig:
    """The ``ray`` section with the ``--ray.*`` overrides of ``overrides`` on top of the defaults."""
    return load_config(overrides=[o for o in overrides if o.startswith("--ray.")]).ray


# ---------------------------------------------------------------- sources


def has_scheme(source: str) -> bool:
    """Whether ``source`` is a URI (``s3://b/k``, ``file:///x``), not a local path."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.isidentifier()


def image_sources(images: str) -> dict[str, str]:
    """Image name (its file name, which becomes the ImageId) -> where to read it.

    ``images`` is a local folder (its images, as plain predict.py lists
    them), a text file of paths or URIs (one a line; blank lines and ``#``
    comments ignored; relative paths are relative to the file's folder) or
    the URI of a folder (``s3://bucket/strips/``: the image files directly
    in it). Names must have distinct stems, which name the outputs.
    """
    if has_scheme(images):
        sources = _folder_uri(images)
    elif Path(images).is_dir():
        sources = {name: str(Path(images) / name) for name in list_images(images)}
    elif Path(images).is_file():
        sources = _list_file(Path(images))
    else:
        raise FileNotFoundError(f"--images {images}: no such folder or list file")
    if not sources:
        raise FileNotFoundError(f"no images in {images}")
    check_stems(list(sources), images)
    return dict(sorted(sources.items()))


def _list_file(path: Path) -> dict[str, str]:
    sources = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        source = line if has_scheme(line) or Path(line).is_absolute() else str(path.parent / line)
        name = PurePosixPath(line).name
        if name in sources:
            raise ValueError(f"{path}:{number}: {line} has the file name of {sources[name]}; names must differ")
        sources[name] = source
    return sources


def _folder_uri(uri: str) -> dict[str, str]:
    from pyarrow import fs

    filesystem, folder = fs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(fs.FileSelector(folder, recursive=False))
    base = uri.rstrip("/")
    return {PurePosixPath(i.path).name: f"{base}/{PurePosixPath(i.path).name}" for i in infos
            if i.type == fs.FileType.File and PurePosixPath(i.path).suffix.lower() in IMAGE_SUFFIXES}


def read_source(source: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a local path (``datasets.io.read_image``, so
    errors read as the plain run's) or a URI (pyarrow's file systems).
    Raises ImageReadError naming ``source``."""
    if not has_scheme(source):
        return read_image(source)
    from pyarrow import ArrowException, fs

    try:
        filesystem, path = fs.FileSystem.from_uri(source)
        with filesystem.open_input_stream(path) as stream:
            data = stream.readall()
    except (OSError, ArrowException) as error:
        raise ImageReadError(f"cannot read image {source}: {error}") from error
    return decode_image(data, source)


def read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: ``{image, source}`` rows -> ``{image, pixels: uint8 [H, W, 3]
    (empty when unreadable), error: "" or why}``."""
    pixels, errors = [], []
    for source in batch["source"]:
        try:
            pixels.append(read_source(str(source)))
            errors.append("")
        except ImageReadError as error:
            pixels.append(EMPTY)
            errors.append(str(error))
    return {"image": batch["image"], "pixels": _ragged(pixels), "error": np.array(errors, dtype=object)}


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of arrays, which Ray Data stores as a tensor column of
    variable shape (a plain np.array would try to stack them)."""
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


# ---------------------------------------------------------------- the actors


class PredictWorker:
    """A Ray actor holding the models: rows ``{image, pixels, error}`` (or
    ``{image, source}`` when it reads the images itself, ``read=True``) ->
    ``{image, rle1..rle4: the RLE of each class, shape: [H, W], png: the
    masks/<stem>.png bytes, scores: the 4 image-level class scores,
    anomaly_png and anomaly_score: an anomaly model's map (anomaly/<stem>.png
    bytes) and score (empty and NaN for other models), error}``, as
    ``ResultWriter`` would write them."""

    def __init__(self, checkpoints: Sequence[str], overrides: Sequence[str], device: str, threads: int,
                 read: bool = False):
        self.read = read
        if threads:
            torch.set_num_threads(threads)
        self.predictor, self.postprocess, _ = load_predictor(checkpoints, overrides, device)
        print(f"worker pid {os.getpid()} on {device}, {torch.get_num_threads()} torch threads, "
              f"predict.amp: {self.predictor.precision.describe()}", flush=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.read:
            batch = read_batch(batch)
        n = len(batch["image"])
        # what an unreadable row keeps
        rles, shapes, pngs = [[""] * 4 for _ in range(n)], [[0, 0] for _ in range(n)], [b""] * n
        scores, anomaly_pngs, anomaly_scores = np.full((n, 4), np.nan), [b""] * n, np.full(n, np.nan)
        readable = [i for i in range(n) if not batch["error"][i]]
        items = ((i, to_tensor(np.asarray(batch["pixels"][i]))) for i in readable)
        for indices, images in same_size_groups(items, self.predictor.images_per_call):
            probs, class_probs = self.predictor.predict_probs(images)
            for k, i in enumerate(indices):
                cp = None if class_probs is None else class_probs[k]
                rles[i], shapes[i], pngs[i] = self._outputs(probs[k], cp)
                scores[i] = class_scores(probs[k], cp)
                if self.predictor.anomaly:
                    anomaly, anomaly_scores[i] = anomaly_outputs(probs[k], images[k], self.predictor.anomaly_score)
                    anomaly_pngs[i] = encode_anomaly_png(anomaly)
        columns = {f"rle{c}": np.array([r[c - 1] for r in rles], dtype=object) for c in CLASS_IDS}
        return {"image": batch["image"], **columns, "shape": np.array(shapes, np.int64),
                "png": _ragged([np.frombuffer(p, np.uint8) for p in pngs]), "scores": scores,
                "anomaly_png": _ragged([np.frombuffer(p, np.uint8) for p in anomaly_pngs]),
                "anomaly_score": anomaly_scores, "error": batch["error"]}

    def _outputs(self, probs: torch.Tensor, class_probs: torch.Tensor | None) -> tuple[list[str], list[int], bytes]:
        masks = self.postprocess(probs, class_probs)
        ok, png = cv2.imencode(".png", class_map(masks, probs.numpy()))
        if not ok:
            raise OSError(f"cv2 cannot encode a mask of shape {masks.shape[1:]} as PNG")
        return [rle_encode(m) for m in masks], list(masks.shape[1:]), png.tobytes()


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class RayPlan:
    """What the pipeline needs, resolved before Ray starts."""

    workers: int
    device: str  # the actors' device: cuda (Ray assigns each actor its GPU) or cpu
    read_in_workers: bool  # the actors read their own images (no read stage)


def plan(cfg: RayConfig, cluster: dict[str, float]) -> RayPlan:
    """Actors, their device and who reads the images, from ``ray.*`` and the
    cluster's resources (``ray.cluster_resources()``). ``ray.workers=0``
    fills the cluster: one actor per GPU share when actors hold GPUs, else
    one per ``ray.num_cpus_per_worker`` of the CPUs the read tasks (if any)
    leave. Refuses a pool that would leave no CPU for the read tasks (Ray
    would wait for ever)."""
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    on_gpu = cfg.num_gpus_per_worker > 0
    read_in_workers = cfg.read == "workers" or (cfg.read == "auto" and not on_gpu)
    read_cpus = 0.0 if read_in_workers else cfg.read_cpus
    if on_gpu:
        if gpus < cfg.num_gpus_per_worker:
            raise ConfigError(f"ray.num_gpus_per_worker={cfg.num_gpus_per_worker:g} but the Ray cluster has "
                              f"{gpus:g} GPUs; --ray.num_gpus_per_worker=0 makes CPU actors")
        workers = cfg.workers or max(1, int(gpus // cfg.num_gpus_per_worker))
    else:
        workers = cfg.workers or max(1, int((cpus - read_cpus) // cfg.num_cpus_per_worker))
    needed = workers * cfg.num_cpus_per_worker + read_cpus
    if needed > cpus:
        reads = f" + ray.read_cpus={read_cpus:g}" if read_cpus else ""
        raise ConfigError(f"{workers} workers x ray.num_cpus_per_worker={cfg.num_cpus_per_worker:g}{reads} need "
                          f"{needed:g} CPUs, the Ray cluster has {cpus:g}; lower ray.workers or "
                          "ray.num_cpus_per_worker")
    return RayPlan(workers, "cuda" if on_gpu else "cpu", read_in_workers)


def connect(ray, cfg: RayConfig) -> bool:
    """Join ``ray.address`` or start a local Ray; True when this call
    started it (so the run shuts it down). A Ray already initialised in this
    process (a notebook, a test) is used as it is."""
    if ray.is_initialized():
        return False
    if cfg.address:
        ray.init(address=cfg.address)
    else:
        ray.init(num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=cfg.object_store_mb * 2**20)
    return True


def predict_with_ray(checkpoints: Sequence, images, out_dir, overrides: Sequence[str] = (), *,
                     layout: str = RERELEASED, resume: bool = False, show: bool = True) -> RunSummary:
    """Predict every image of ``images`` (see ``image_sources``) into
    ``out_dir`` on Ray: the files of the plain run (masks, submission,
    skipped.txt), settings from the first checkpoint with ``overrides``
    (``--predict.*``, ``--postprocess.*``, ``--ray.*``) on top."""
    cfg = ray_config(overrides)  # a bad --ray.* setting is named before Ray is even needed
    ray = import_ray()
    out_dir, journal_dir = Path(out_dir), Path(out_dir) / JOURNAL_DIR
    sources = image_sources(str(images))
    checkpoints = [str(Path(c).resolve()) for c in checkpoints]
    _check_predictor(checkpoints, overrides)
    todo = todo_images(list(sources), journal_dir, resume)
    n_predicted = 0
    if todo:
        started = connect(ray, cfg)
        try:
            n_predicted = _run(ray, cfg, checkpoints, overrides, {n: sources[n] for n in todo}, out_dir, show)
        finally:
            if started:
                ray.shutdown()
    return write_submission(out_dir, list(sources), layout, n_predicted)


def _check_predictor(checkpoints: Sequence[str], overrides: Sequence[str]) -> None:
    """Fail before Ray starts on what the plain run refuses; print what it prints."""
    predictor, postprocess, origin = load_predictor(checkpoints, overrides, "cpu")
    if any(postprocess.gate) and not predictor.has_class_probs:
        raise ConfigError(f"postprocess.gate={postprocess.gate} needs a model with a classification head")
    print(f"post-processing: {origin}", flush=True)


def _run(ray, cfg: RayConfig, checkpoints, overrides, todo: dict[str, str], out_dir: Path, show: bool) -> int:
    """Stream ``todo`` (name -> source) through the pipeline, writing each
    image's mask and journal line as it arrives; returns how many images
    were predicted."""
    the_plan = plan(cfg, ray.cluster_resources())
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's own bar counts images
    pipeline = _pipeline(ray, cfg, the_plan, todo, checkpoints, overrides)
    reads = "reading their own images" if the_plan.read_in_workers else "images read by Ray tasks"
    print(f"ray: {the_plan.workers} {the_plan.device} workers ({reads}), {len(todo)} images", flush=True)
    n_predicted = 0
    with Journal(out_dir / JOURNAL_DIR / "rank0.jsonl") as journal:
        bar = progress(None, show, total=len(todo), desc="predict (ray)", unit="img")
        for batch in pipeline.iter_batches(batch_size=None, batch_format="numpy"):
            n_predicted += _write_batch(batch, out_dir, journal)
            bar.update(len(batch["image"]))
        bar.close()
    return n_predicted


def _pipeline(ray, cfg: RayConfig, the_plan: RayPlan, todo: dict[str, str], checkpoints, overrides):
    """The lazy Ray Dataset: sources -> [read and decode (tasks)] -> PredictWorker (actors)."""
    rows = [{"image": name, "source": source} for name, source in todo.items()]
    worker_args = {"checkpoints": list(checkpoints), "overrides": list(overrides), "device": the_plan.device,
                   "threads": cfg.threads_per_worker, "read": the_plan.read_in_workers}
    # Ray Data's actors default to retrying for ever; bounded, a crash on every try ends the run. No named
    # parameter takes these yet, only ray_remote_args (deprecated for Ray 2.64: the extra pins Ray below it)
    retries = {"max_restarts": cfg.max_restarts, "max_task_retries": cfg.max_task_retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // cfg.batch_size))
        if not the_plan.read_in_workers:
            dataset = dataset.map_batches(read_batch, batch_size=cfg.batch_size, num_cpus=cfg.read_cpus,
                                          batch_format="numpy")
        return dataset.map_batches(
            PredictWorker, batch_size=cfg.batch_size, batch_format="numpy", fn_constructor_kwargs=worker_args,
            compute=ray.data.ActorPoolStrategy(size=the_plan.workers), num_cpus=cfg.num_cpus_per_worker,
            num_gpus=cfg.num_gpus_per_worker or None, **retries)


def _write_batch(batch: dict[str, np.ndarray], out_dir: Path, journal: Journal) -> int:
    """Each row's mask file, then its journal line (a line means the image's files are complete)."""
    n_written = 0
    for i, name in enumerate(batch["image"]):
        name, error = str(name), str(batch["error"][i])
        if error:
            journal.append({"image": name, "error": error})
            continue
        stem = Path(name).stem
        with atomic_path(out_dir / "masks" / f"{stem}.png") as tmp:
            tmp.write_bytes(np.asarray(batch["png"][i], np.uint8).tobytes())
        record = {"image": name, "rles": [str(batch[f"rle{c}"][i]) for c in CLASS_IDS],
                  "shape": [int(v) for v in batch["shape"][i]], "scores": [float(v) for v in batch["scores"][i]]}
        if not np.isnan(batch["anomaly_score"][i]):
            with atomic_path(out_dir / ANOMALY_DIR / f"{stem}.png") as tmp:
                tmp.write_bytes(np.asarray(batch["anomaly_png"][i], np.uint8).tobytes())
            record["anomaly_score"] = float(batch["anomaly_score"][i])
        journal.append(record)
        n_written += 1
    return n_written
