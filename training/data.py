"""Datasets and loaders for a run, built from the config.

Randomness is a function of (seed, epoch, rank, worker): the sampler shuffles
with ``set_epoch``, the loader draws worker seeds from a generator seeded per
epoch, and each worker reseeds the dataset's generator (crops and the
Albumentations seed of every item). A run resumed at an epoch boundary
therefore sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from core.config import Config, ConfigError
from core.distributed import DistInfo
from datasets.augment import build_train_transform
from datasets.copy_paste import InstancePool
from datasets.instance import SeverstalInstances
from datasets.semantic import SeverstalSegmentation
from datasets.severstal import AnnotationError, Annotations, csv_image_ids
from datasets.splits import fold_image_ids, load_or_make_folds, split_file_name


@dataclass
class RunData:
    annotations: Annotations  # data.root's images: the split covers exactly these
    train_ids: list[str]  # the fold's training images, then the pseudo-labelled and extra ones
    val_ids: list[str]
    split_file: Path
    train_annotations: Annotations  # annotations plus the pseudo-labelled and extra images


def load_run_data(cfg: Config, verbose: bool = False) -> RunData:
    """Annotations of ``data.root``, the train/validation ids of ``data.fold``,
    and the pseudo-labelled images of ``data.pseudo_csv`` added to training
    only (the split and the validation fold ignore them)."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={root} does not exist; run `python scripts/make_synthetic.py --out {root}` "
            "or point data.root at the Kaggle folder")
    shape = (cfg.data.image_height, cfg.data.image_width)
    annotations = Annotations.load(root / cfg.data.train_csv, root / cfg.data.train_images, shape, verbose=verbose)
    split_file = split_path(cfg)
    folds = load_or_make_folds(split_file, annotations, cfg.data.folds, cfg.data.split_seed)
    train_ids, val_ids = fold_image_ids(folds, cfg.data.fold)
    if cfg.data.max_train_images:
        train_ids = train_ids[: cfg.data.max_train_images]
    if cfg.data.max_val_images:
        val_ids = val_ids[: cfg.data.max_val_images]
    train_annotations = annotations
    if cfg.data.pseudo_csv or cfg.data.pseudo_images:
        pseudo = load_pseudo_labels(cfg, verbose)
        train_annotations = annotations.merge(pseudo)
        train_ids = list(train_ids) + pseudo.image_ids
    if cfg.data.extra_root:
        extra = load_extra_strips(cfg, verbose)
        train_annotations = train_annotations.merge(extra)
        train_ids = list(train_ids) + extra.image_ids
    return RunData(annotations, list(train_ids), list(val_ids), split_file, train_annotations)


def load_pseudo_labels(cfg: Config, verbose: bool = False) -> Annotations:
    """The images ``data.pseudo_csv`` names (defect-free ones included, which
    only the competition layout can name) with their masks, from
    ``data.pseudo_images``."""
    if not (cfg.data.pseudo_csv and cfg.data.pseudo_images):
        raise ConfigError("data.pseudo_csv and data.pseudo_images go together: the pseudo-label csv and "
                          "the folder of its images")
    csv_path, image_dir = Path(cfg.data.pseudo_csv), Path(cfg.data.pseudo_images)
    shape = (cfg.data.image_height, cfg.data.image_width)
    annotations = Annotations.load(csv_path, image_dir, shape, verbose=verbose)
    named = csv_image_ids(csv_path)
    if missing := sorted(set(named) - set(annotations.image_ids)):
        raise AnnotationError(f"{csv_path} names {len(missing)} images not found in {image_dir}: "
                              f"{', '.join(missing[:5])}")
    if verbose:
        print(f"{len(named)} pseudo-labelled images from {csv_path} added to training")
    return annotations.subset(named)


def load_extra_strips(cfg: Config, verbose: bool = False) -> Annotations:
    """Every image of ``data.extra_root`` (Severstal layout: its
    data.train_csv and data.train_images, e.g. scripts/synthesize.py's
    output) with its masks, for training only."""
    root = Path(cfg.data.extra_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.extra_root={root} does not exist (e.g. write it with scripts/synthesize.py)")
    shape = (cfg.data.image_height, cfg.data.image_width)
    extra = Annotations.load(root / cfg.data.train_csv, root / cfg.data.train_images, shape, verbose=verbose)
    if verbose:
        print(f"{len(extra.image_ids)} extra strips from {root} added to training")
    return extra


def split_path(cfg: Config) -> Path:
    """The split file: data.split_file, else next to the data (where every
    experiment on that data reuses it), else in output_dir when the data
    folder is read-only (e.g. a Kaggle input mount)."""
    if cfg.data.split_file:
        return Path(cfg.data.split_file)
    name = split_file_name(cfg.data.folds, cfg.data.split_seed)
    root = Path(cfg.data.root)
    return root / name if os.access(root, os.W_OK) else Path(cfg.output_dir) / name


def build_train_dataset(cfg: Config, data: RunData, target_kind: str):
    crop = (cfg.data.crop_height, cfg.data.crop_width) if cfg.data.crop_width else None
    if target_kind == "defect_free" and cfg.augment.copy_paste.p > 0:
        raise ConfigError("augment.copy_paste.p > 0 pastes defects, but this model learns defect-free steel only "
                          "(models/autoencoder.py): set augment.copy_paste.p=0")
    transform = build_train_transform(cfg.augment, copy_paste_pool(cfg, data))
    common = dict(crop=crop, crop_defect_prob=cfg.data.crop_defect_prob, transform=transform)
    if target_kind == "defect_free":  # an anomaly detector learns good steel only (models/autoencoder.py)
        good = [i for i in data.train_ids if not data.train_annotations.classes_present(i)]
        return SeverstalSegmentation(data.train_annotations, good, **common)
    if target_kind == "instance":
        return SeverstalInstances(data.train_annotations, data.train_ids, min_area=cfg.data.min_instance_area,
                                  **common)
    return SeverstalSegmentation(data.train_annotations, data.train_ids, **common)


def copy_paste_pool(cfg: Config, data: RunData) -> InstancePool | None:
    """The instances copy-paste draws from: those of the fold's training
    strips of data.root (never validation, pseudo-labelled or extra ones);
    None when augment.copy_paste.p is 0."""
    paste = cfg.augment.copy_paste
    if paste.p <= 0:
        return None
    own = set(data.annotations.image_ids) - set(data.val_ids)
    return InstancePool(data.annotations, [i for i in data.train_ids if i in own], paste.classes, paste.min_area)


def build_val_dataset(data: RunData) -> SeverstalSegmentation:
    """Whole strips, no augmentation: validation scores full 1600x256 images."""
    return SeverstalSegmentation(data.annotations, data.val_ids, crop=None, transform=None)


def seed_worker(worker_id: int) -> None:
    """Reseed a loader worker from the seed torch gave it."""
    info = get_worker_info()
    seed_dataset(info.dataset, info.seed)


def seed_dataset(dataset, seed: int) -> None:
    """The dataset draws crops and augmentation seeds from its own generator;
    numpy and ``random`` are seeded too, for transforms users add."""
    seed = int(seed) % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset.set_seed(seed)


class MixedWidthBatchSampler(Sampler):
    """Batches of ``(index, crop_width)``: one width drawn per batch from
    ``widths`` (so every batch stacks), indices from ``sampler``, incomplete
    last batch dropped. The draws are seeded, so an epoch is reproducible."""

    def __init__(self, sampler, batch_size: int, widths: list[int], seed: int):
        self.sampler, self.batch_size, self.widths, self.seed = sampler, batch_size, list(widths), seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        batch = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                width = self.widths[int(torch.randint(len(self.widths), (), generator=generator))]
                yield [(i, width) for i in batch]
                batch = []

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


def class_balance_weights(annotations: Annotations, image_ids, power: float) -> np.ndarray:
    """Sampling weights [N] that draw rare classes more often: an image weighs
    (1 / frequency of its rarest label) ** power, its labels being the classes
    it holds or "defect-free". power 0 gives uniform weights, 1 draws every
    label equally often (up to images holding two)."""
    labels = [annotations.classes_present(i) or (0,) for i in image_ids]
    counts = {label: sum(label in ls for ls in labels) for label in {l for ls in labels for l in ls}}
    weights = np.array([max(1.0 / counts[l] for l in ls) for ls in labels]) ** power
    return weights / weights.sum()


class WeightedShardSampler(Sampler):
    """``len(weights) // num_replicas`` indices per rank per epoch, drawn with
    replacement by ``weights``, the same draw on every rank (seeded by seed
    and epoch) split between ranks: DistributedSampler's contract with
    weights."""

    def __init__(self, weights: np.ndarray, num_replicas: int, rank: int, seed: int):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = len(self) * self.num_replicas
        draw = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(draw[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(self.weights) // self.num_replicas


def train_loader(dataset, cfg: Config, dist_info: DistInfo, epoch: int) -> DataLoader:
    """The training loader of one epoch: shuffled by (seed, epoch), sharded by
    rank; with ``data.class_balance`` images are drawn with class-balancing
    weights; with ``data.crop_widths`` each batch takes one of those widths."""
    if cfg.data.class_balance > 0:
        weights = class_balance_weights(dataset.annotations, dataset.image_ids, cfg.data.class_balance)
        sampler = WeightedShardSampler(weights, dist_info.world_size, dist_info.rank, cfg.train.seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.train.seed, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch * 1_009 + dist_info.rank)
    if cfg.data.num_workers == 0:
        seed_dataset(dataset, int(torch.randint(2**31, (1,), generator=generator)))
    if cfg.data.crop_widths:
        batches = {"batch_sampler": MixedWidthBatchSampler(sampler, cfg.data.batch_size, cfg.data.crop_widths,
                                                            seed=cfg.train.seed * 7_919 + epoch)}
    else:
        batches = {"batch_size": cfg.data.batch_size, "sampler": sampler, "drop_last": True}
    return DataLoader(
        dataset, num_workers=cfg.data.num_workers, collate_fn=dataset.collate_fn, worker_init_fn=seed_worker,
        generator=generator, pin_memory=dist_info.device.type == "cuda", persistent_workers=False, **batches,
    )


def val_loader(dataset, cfg: Config, dist_info: DistInfo) -> DataLoader:
    """Validation images sharded by rank without padding: every image is
    scored exactly once across ranks."""
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=cfg.data.val_batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                      collate_fn=dataset.collate_fn, pin_memory=dist_info.device.type == "cuda")
