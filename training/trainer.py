"""The training loop, shared by every model.

The loop sums the loss dict a model returns in train mode and scores the
per-class probabilities it returns in eval mode; it never asks which model it
runs (docs/CONTRACTS.md).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from functools import reduce
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from core.classes import NUM_CLASSES
from core.config import Config, to_dict
from core.distributed import DistInfo, broadcast_module_state, gather_objects, mean_across_ranks
from core.precision import Precision, resolve_amp
from core.progress import progress
from inference.metrics import dice_from_counts, empty_baseline, kaggle_score, pair_counts
from inference.postprocess import PostProcess, Tuner, TuneResult
from inference.predictor import Predictor, has_class_head
from inference.visualize import overlay_panel, to_bgr_uint8

from .data import train_loader, val_loader
from .distill import Teacher
from .logger import RunLogger
from .optim import build_ema, build_optimizer, build_scheduler


def to_device(obj, device: torch.device):
    """Tensors moved to ``device`` inside nested dicts/lists; the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class Trainer:
    """Owns the model, optimiser, schedule, scaler, EMA and their checkpoints."""

    def __init__(self, cfg: Config, dist_info: DistInfo, model: nn.Module, train_set, val_set, logger: RunLogger,
                 precision: Precision | None = None):
        """``precision``: train.amp as resolved by train.py (what it asked for
        and why); None resolves ``cfg.train.amp`` here."""
        self.cfg, self.dist, self.logger = cfg, dist_info, logger
        self.train_set, self.val_set = train_set, val_set
        self.device = dist_info.device
        self.precision = precision or resolve_amp(cfg.train.amp, self.device, key="train.amp")
        self.autocast = self.precision.autocast
        self.model = self._prepare_model(model)
        self.teacher = Teacher.from_config(cfg, self.device, self.precision)  # None without distillation
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.scheduler, self.scheduler_when = build_scheduler(
            self.optimizer, cfg.optim, self.steps_per_epoch, cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.grad_scaler)
        self.ema = build_ema(self.raw_model, cfg.train.ema)
        self.epoch, self.step, self.best_score = 0, 0, -math.inf
        self.tuned: TuneResult | None = None  # post-processing tuned at the last validation
        self.tuned_epoch = 0
        self.output_dir = Path(cfg.output_dir)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled:
            if self.cfg.train.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    @property
    def raw_model(self) -> nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def _steps_per_epoch(self) -> int:
        batches = len(self.train_set) // (self.cfg.data.batch_size * self.dist.world_size)
        if self.cfg.train.max_steps_per_epoch:
            batches = min(batches, self.cfg.train.max_steps_per_epoch * self.cfg.train.accum_steps)
        if batches == 0:
            raise ValueError(
                f"{len(self.train_set)} training images are fewer than one batch "
                f"(data.batch_size={self.cfg.data.batch_size} x {self.dist.world_size} ranks)")
        return math.ceil(batches / self.cfg.train.accum_steps)

    # ------------------------------------------------------------------ fit

    def fit(self) -> dict:
        """Train from ``self.epoch`` to ``train.epochs``, validating every
        ``train.val_every`` epochs and after the last; returns the last record."""
        record = {}
        for epoch in range(self.epoch + 1, self.cfg.train.epochs + 1):
            started = time.time()
            torch.manual_seed(self.cfg.train.seed * 1_000_003 + epoch * 10_007 + self.dist.rank)
            train_losses = self.train_one_epoch(epoch)
            self.epoch = epoch
            record = {"epoch": epoch, "step": self.step, "lr": self.optimizer.param_groups[-1]["lr"],
                      "train": train_losses}
            improved, overlays = False, {}
            if epoch % self.cfg.train.val_every == 0 or epoch == self.cfg.train.epochs:
                metrics, overlays = self.evaluate()
                self.tuned_epoch = epoch
                score = metrics["tuned"]["score"] if self.cfg.train.select == "tuned" else metrics["score"]
                if self.scheduler_when == "metric":
                    self.scheduler.step(score)
                improved = score > self.best_score
                self.best_score = max(self.best_score, score)
                record.update(val=metrics, best_score=self.best_score)
            record["time_s"] = round(time.time() - started, 2)
            self.logger.log_epoch(record, self.step, overlays)
            if self.dist.is_main:
                self.save("last.pt")
                if improved:
                    self.save("best.pt")
                    self.tuned.postprocess.to_json(self.output_dir / "postprocess.json")
                self._print_epoch(record)
        return record

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the epoch's training loader: ``steps_per_epoch``
        calls of :meth:`train_step` on ``train.accum_steps`` micro-batches
        each (the last may have fewer). Returns each logged loss averaged
        over the micro-batches and then over ranks."""
        loader = train_loader(self.train_set, self.cfg, self.dist, epoch)
        n_batches = min(len(loader), self.steps_per_epoch * self.cfg.train.accum_steps)
        bar = progress(loader, self.dist.is_main, total=n_batches, desc=f"epoch {epoch}")
        sums: dict[str, float] = {}
        for batches in _groups(islice(bar, n_batches), self.cfg.train.accum_steps):
            losses = self.train_step(batches)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value * len(batches)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        means = {k: v / n_batches for k, v in sums.items()}
        return mean_across_ranks(means, self.device)

    def train_step(self, batches: Sequence[tuple]) -> dict[str, float]:
        """One optimiser step as the loop takes it (detectron2's ``run_step``;
        the benchmarks time it).

        ``batches``: the step's micro-batches, each ``(images, targets)`` as
        the training dataset's ``collate_fn`` makes them, on any device:
        ``train.accum_steps`` of them in the loop, fewer at an epoch's end,
        one for a plain step. Each is moved to the trainer's device
        (channels_last with ``train.channels_last``), run forward in train
        mode under the trainer's autocast, and its loss sum / len(batches)
        backpropagated through the GradScaler (under DDP, all but the last
        in ``no_sync``). Then gradient clipping (``train.clip_grad``), the
        optimiser and scaler step, the EMA update, the per-step scheduler
        and ``self.step += 1``.

        Returns float losses, the model's dict plus their sum ``"loss"``,
        each the mean over the micro-batches (unscaled, this rank's). A
        non-finite sum raises FloatingPointError naming the losses, before
        its backward pass.
        """
        if not batches:
            raise ValueError("train_step needs at least one (images, targets) batch")
        self.model.train()
        logged = [self._forward_backward(images, targets, len(batches), sync=i == len(batches) - 1)
                  for i, (images, targets) in enumerate(batches)]
        self._optimizer_step()
        return {name: sum(values[name] for values in logged) / len(logged) for name in logged[0]}

    def _forward_backward(self, images, targets, n_micro: int, sync: bool) -> dict[str, float]:
        images = to_device(images, self.device)
        targets = to_device(targets, self.device)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.teacher is not None:
            targets = self.teacher.label(images, targets)
        no_sync = self.model.no_sync if isinstance(self.model, DistributedDataParallel) and not sync else nullcontext
        with no_sync():
            with self.autocast():
                losses = self.model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) for k, v in losses.items()}
                raise FloatingPointError(f"non-finite loss at epoch {self.epoch + 1}, step {self.step}: {values}")
            self.scaler.scale(loss / n_micro).backward()
        logged = {k: float(v.detach()) for k, v in losses.items()}
        logged["loss"] = float(loss.detach())
        return logged

    def _optimizer_step(self) -> None:
        if self.cfg.train.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        if self.scheduler_when == "step":
            self.scheduler.step()
        self.step += 1
        if self.dist.is_main and self.step % 10 == 0:
            self.logger.log_step({"lr": self.optimizer.param_groups[-1]["lr"]}, self.step)

    # ------------------------------------------------------------- evaluate

    @torch.inference_mode()
    def evaluate(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Kaggle score on whole validation strips, from per-(image, class)
        counts gathered over ranks (never an average of per-rank means)."""
        model = self.eval_model
        broadcast_module_state(model)  # every rank scores exactly the weights rank 0 saves
        model.eval()
        predictor = self._val_predictor(model)
        ids, counts, overlays = [], [], {}
        threshold = self.cfg.train.val_threshold
        tuner = Tuner(base=PostProcess(threshold=[threshold] * NUM_CLASSES))
        for images, targets in progress(val_loader(self.val_set, self.cfg, self.dist), self.dist.is_main, desc="val"):
            images = images.to(self.device)
            if predictor is not None:
                probs, class_probs = predictor.predict_probs(images)
            else:
                with self.autocast():
                    probs, class_probs = eval_outputs(model, images)
            truth = targets["masks"] > 0.5
            pred = probs > threshold
            counts.append(pair_counts(pred, truth))
            ids.extend(targets["image_id"])
            for i in range(len(probs)):
                tuner.add(probs[i], truth[i], None if class_probs is None else class_probs[i])
            if self.dist.is_main and len(overlays) < self.cfg.train.n_overlays:
                overlays.update(self._overlays(images, pred, targets, self.cfg.train.n_overlays - len(overlays)))
        self.model.train()
        metrics = self._score(ids, counts)
        self.tuned = reduce(Tuner.merge, gather_objects(tuner)).result()
        metrics["tuned"] = {**self.tuned.after, "postprocess": asdict(self.tuned.postprocess)}
        return metrics, overlays

    def _val_predictor(self, model: nn.Module) -> Predictor | None:
        """With ``train.val_inference=predict``, predict.py's inference of the
        model (tiles, TTA, ``predict.amp``), in the training's memory format
        (the Predictor would convert the training model to ``predict.channels_last``;
        where the two flags differ, the probabilities differ from predict.py's by
        float32 rounding only); None for one whole-strip pass."""
        if self.cfg.train.val_inference != "predict":
            return None
        return Predictor([model], replace(self.cfg.predict, channels_last=self.cfg.train.channels_last), self.device)

    def _score(self, ids: list[str], counts: list[np.ndarray]) -> dict:
        local = dict(zip(ids, np.concatenate(counts) if counts else []))
        merged: dict[str, np.ndarray] = {}
        for part in gather_objects(local):
            merged.update(part)
        if not merged:
            raise ValueError("the validation fold is empty")
        table = np.stack([merged[k] for k in sorted(merged)])  # [N, 4, 3]
        result = kaggle_score(dice_from_counts(table))
        result["empty_baseline"] = empty_baseline(table[..., 2] > 0)["score"]
        result["n_images"] = len(merged)
        return result

    @staticmethod
    def _overlays(images, pred, targets, n: int) -> dict[str, np.ndarray]:
        """Up to ``n`` validation panels (uint8 BGR [*, W, 3], as ``overlay_panel``
        draws and ``RunLogger.log_epoch`` writes them), keyed ``val/<image_id>``:
        ``images`` float [B, 3, H, W] RGB in [0, 1]; ``pred`` bool [B, 4, H, W];
        ``targets["masks"]`` float [B, 4, H, W] in {0, 1}."""
        out = {}
        for image, p, t, image_id in list(zip(images, pred, targets["masks"], targets["image_id"]))[:n]:
            strip = to_bgr_uint8(image.float().cpu())  # overlay_panel draws on cv2's BGR
            out[f"val/{image_id}"] = overlay_panel(strip, p.numpy(), t.numpy() > 0.5, title=image_id)
        return out

    # ---------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Everything a resume needs, plus the config with the post-processing
        tuned at the last validation (what predict.py applies by default)."""
        return {
            "model": self.raw_model.state_dict(),
            "ema": _strip_ema(self.ema.state_dict()) if self.ema is not None else None,
            "ema_n_averaged": self.ema.n_averaged.clone() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_score": self.best_score,
            "rng": rng_state(),
            "config": self._config_with_tuned_postprocess(),
            "precision": self.precision.to_dict(),
            "tuned": None if self.tuned is None else {**asdict(self.tuned), "epoch": self.tuned_epoch},
            "wandb_id": self.logger.run_id,
        }

    def _config_with_tuned_postprocess(self) -> dict:
        config = to_dict(self.cfg)
        if self.tuned is not None:
            after, before = self.tuned.after["score"], self.tuned.before["score"]
            source = (f"tuned on the validation fold at epoch {self.tuned_epoch} ({self.tuned.n_images} images: "
                      f"score {before:.4f} at threshold {self.cfg.train.val_threshold} -> {after:.4f})")
            config["postprocess"].update(asdict(self.tuned.postprocess), file="", source=source)
        return config

    def save(self, name: str) -> None:
        save_checkpoint(self.state_dict(), self.output_dir / name)

    def resume(self, path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.raw_model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best_score = ckpt["epoch"], ckpt["step"], ckpt["best_score"]
        if ckpt.get("tuned"):
            tuned = dict(ckpt["tuned"])
            self.tuned_epoch = tuned.pop("epoch")
            self.tuned = TuneResult(PostProcess(**tuned.pop("postprocess")), **tuned)
        set_rng_state(ckpt["rng"])

    def _print_epoch(self, r: dict) -> None:
        line = (f"epoch {r['epoch']}/{self.cfg.train.epochs} step {r['step']} "
                f"loss {r['train'].get('loss', float('nan')):.4f}")
        if "val" in r:
            per_class = " ".join(f"{k}:{v:.3f}" for k, v in r["val"]["per_class"].items())
            tuned = " ".join(f"{k}:{v:.3f}" for k, v in r["val"]["tuned"]["per_class"].items())
            line += (f" val {r['val']['score']:.4f} (empty {r['val']['empty_baseline']:.4f}; {per_class}) "
                     f"tuned {r['val']['tuned']['score']:.4f} ({tuned}) best {r['best_score']:.4f}")
        print(f"{line} [{r['time_s']:.0f}s]", flush=True)


def local_trainer(cfg: Config, model: nn.Module, train_set, precision: Precision, val_set=None) -> Trainer:
    """A single-process Trainer on ``precision.device`` whose logger records
    nothing (no W&B run, no metrics file): for timing and testing
    :meth:`Trainer.train_step`. ``train_set`` sizes the schedule (at least
    ``data.batch_size`` items); ``evaluate`` needs ``val_set``."""
    device = torch.device(precision.device)
    return Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device), model, train_set, val_set,
                   RunLogger(cfg, is_main=False), precision)


def eval_outputs(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An eval-mode model's mask probabilities and, with a classification
    head, its class probabilities (else None), float32 on the CPU; one encoder
    pass where the model offers ``probs_and_class_probs`` (docs/CONTRACTS.md)."""
    if not has_class_head(model):
        return model(images).float().cpu(), None
    both = getattr(model, "probs_and_class_probs", None)
    probs, class_probs = both(images) if both else (model(images), model.class_probs(images))
    return probs.float().cpu(), class_probs.float().cpu()


def _groups(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items of ``items``; the last may be shorter."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _strip_ema(state: dict) -> dict:
    """AveragedModel's state dict as the plain module's (``module.`` prefix off)."""
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
