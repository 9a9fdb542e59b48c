"""Training the mask-conditioned defect GAN and synthesising strips with it.

``GanTrainer`` learns from real patches of the training fold of
``data.fold`` (``datasets.gan_patches``): the discriminator with a hinge or
least-squares loss on real vs generated patches, the generator with the
adversarial loss plus L1 to the input outside the mask (the background is
kept) and, weighted by ``loss.l1_inside``, to the real defect inside it.
The batch of step ``s`` is drawn from ``(train.seed, s)``, so a run resumed
from ``last.pt`` (weights, both optimisers, the step) continues exactly as an
uninterrupted one. ``last.pt`` is written atomically every
``train.checkpoint_every`` steps and at the end; real-vs-generated grids go
to ``samples/`` and W&B (offline by default).

``synthesize`` paints shapes of the training fold's instances into windows
of its defect-free strips and writes a Severstal-layout folder
(``train_images/``, ``train.csv``) that ``data.extra_root`` adds to training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import to_dict
from core.files import atomic_path, atomic_write_text
from core.gan_config import GanConfig, load_gan_config, save_gan_config
from core.precision import Precision, resolve_amp
from datasets.copy_paste import feather_alpha
from datasets.gan_patches import DefectPatches
from datasets.rle import rle_encode
from datasets.severstal import write_mask_csv
from models.gan import (
    DefectGenerator,
    PatchDiscriminator,
    discriminator_loss,
    generator_adv_loss,
    logit_weights,
    masked_l1,
)

from .data import load_run_data

LAST = "last.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_generator(cfg: GanConfig) -> DefectGenerator:
    return DefectGenerator(cfg.model.base_channels, cfg.model.noise)


def training_patches(cfg: GanConfig) -> DefectPatches:
    """The patches of ``data.fold``'s training strips of ``data.root`` (its
    own strips only: no validation, pseudo-labelled or extra ones)."""
    data = load_run_data(cfg)
    own = set(data.annotations.image_ids) - set(data.val_ids)
    ids = [i for i in data.train_ids if i in own]
    return DefectPatches(data.annotations, ids, cfg.train.classes, cfg.model.patch, cfg.train.min_area)


def as_tensors(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


class GanTrainer:
    def __init__(self, cfg: GanConfig, patches: DefectPatches | None = None, verbose: bool = True):
        self.cfg, self.verbose = cfg, verbose
        self.device = resolve_device(cfg.train.device)
        self.precision: Precision = resolve_amp(cfg.train.amp, self.device, key="train.amp")
        self.patches = patches or training_patches(cfg)
        torch.manual_seed(cfg.train.seed)
        self.generator = build_generator(cfg).to(self.device)
        self.discriminator = PatchDiscriminator(cfg.model.disc_channels, input=cfg.model.disc_input).to(self.device)
        betas = tuple(cfg.train.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.train.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.train.lr_d, betas=betas)
        self.step = 0
        self.out = Path(cfg.output_dir)
        self.run = None

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step,
                "config": _plain(self.cfg), "precision": self.precision.to_dict(),
                "wandb_id": self.run.id if self.run is not None else None}

    def save(self) -> None:
        save_checkpoint(self.state(), self.out / LAST)

    def resume(self, path) -> None:
        ckpt = load_checkpoint(path)
        self.generator.load_state_dict(ckpt["generator"])
        self.discriminator.load_state_dict(ckpt["discriminator"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.step = int(ckpt["step"])
        self._wandb_id = ckpt.get("wandb_id")
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():  # drop lines of steps the checkpoint does not hold
            kept = [l for l in metrics.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= self.step]
            atomic_write_text(metrics, "".join(l + "\n" for l in kept))

    # ------------------------------------------------------------ training

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.train.seed, self.step])
        batch = as_tensors(self.patches.batch(rng, cfg.train.batch_size, cfg.train.classes), self.device)
        image, mask, class_ids, noise = batch["image"], batch["mask"], batch["class_ids"], batch["noise"]
        kind = cfg.loss.adversarial
        self.generator.train()
        self.discriminator.train()
        with self.precision.autocast():
            fake = self.generator(image, mask, class_ids, noise)
            real_logits = self.discriminator(image, mask, class_ids)
            weight = logit_weights(mask, real_logits)
            d_loss = discriminator_loss(real_logits, self.discriminator(fake.detach(), mask, class_ids), kind, weight)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with self.precision.autocast():
            adv = generator_adv_loss(self.discriminator(fake, mask, class_ids), kind, weight)
        l1_out = masked_l1(fake, image, 1 - mask)
        l1_in = masked_l1(fake, image, mask)
        g_loss = cfg.loss.adv_weight * adv + cfg.loss.l1_outside * l1_out + cfg.loss.l1_inside * l1_in
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.step += 1
        losses = {"d_loss": d_loss, "g_adv": adv, "l1_outside": l1_out, "l1_inside": l1_in}
        return {k: float(v.detach()) for k, v in losses.items()}

    def fit(self) -> None:
        cfg, steps = self.cfg, self.cfg.train.steps
        self.out.mkdir(parents=True, exist_ok=True)
        save_gan_config(cfg, self.out / "config.yaml")
        self.run = _init_wandb(cfg, getattr(self, "_wandb_id", None))
        started, first = time.perf_counter(), self.step
        with tqdm(total=steps, initial=self.step, desc="gan", disable=not self.verbose, mininterval=5) as bar:
            while self.step < steps:
                losses = self.train_step()
                bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == steps:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                    self._log({"step": self.step, **losses})
                if self.step % cfg.train.sample_every == 0 or self.step == steps:
                    self.write_samples()
                if self.step % cfg.train.checkpoint_every == 0 or self.step == steps:
                    self.save()
        if self.verbose and self.step > first:
            seconds = time.perf_counter() - started
            print(f"{self.step - first} steps in {seconds:.0f} s ({(self.step - first) / seconds:.1f} steps/s); "
                  f"{self.out / LAST}", flush=True)
        if self.run is not None:
            self.run.finish()

    def _log(self, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def write_samples(self) -> Path:
        """A grid of fixed real patches (top row per class) and the generator's
        painting of their masks on the erased patches (bottom row)."""
        rng = np.random.default_rng([self.cfg.train.seed, 2**31])  # the same patches every time
        rows = []
        for class_id in self.cfg.train.classes:
            batch = self.patches.batch(rng, 6, [class_id])
            fake = paint(self.generator, batch, self.device, self.precision)
            rows += [tile_row(batch["image"][:, 0], batch["mask"][:, 0], f"real {class_id}"),
                     tile_row(fake, batch["mask"][:, 0], f"gen {class_id}")]
        path = self.out / "samples" / f"step{self.step:06d}.png"
        _write_png(path, np.concatenate(rows, 0))
        if self.run is not None:
            import wandb

            self.run.log({"samples": wandb.Image(cv2.imread(str(path))[..., ::-1], caption="real / generated")},
                         step=self.step)
        return path


@torch.no_grad()
def paint(generator: DefectGenerator, batch: dict, device: torch.device, precision: Precision) -> np.ndarray:
    """float32 [N, P, P]: the generator's patches for ``batch`` (DefectPatches.batch's keys)."""
    generator.eval()
    t = as_tensors(batch, device)
    with precision.autocast():
        fake = generator(t["image"], t["mask"], t["class_ids"], t["noise"])
    return fake.float()[:, 0].cpu().numpy()


def tile_row(images: np.ndarray, masks: np.ndarray, label: str) -> np.ndarray:
    """uint8 BGR [P, 6 + N*(P+2), 3]: grey patches side by side, mask outlines in red, a label bar on the left."""
    tiles = []
    for image, mask in zip(images, masks):
        grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        tile = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, (0, 0, 255), 1)
        tiles += [tile, np.full((tile.shape[0], 2, 3), 255, np.uint8)]
    row = np.concatenate(tiles, 1)
    bar = np.zeros((row.shape[0], 60, 3), np.uint8)
    cv2.putText(bar, label, (2, row.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    return np.concatenate([bar, row], 1)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cv2 cannot encode the grid {image.shape} as png: {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def _plain(cfg: GanConfig) -> dict:
    return to_dict(cfg)


def _init_wandb(cfg: GanConfig, resume_id: str | None):
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                      name=cfg.wandb.name, group=cfg.wandb.group, tags=cfg.wandb.tags or None,
                      config=_plain(cfg), dir=cfg.output_dir, id=resume_id, resume="allow" if resume_id else None)


def train_gan(cfg: GanConfig, resume: bool = False, verbose: bool = True) -> GanTrainer:
    """Train (or, with ``resume``, continue from ``output_dir/last.pt``) and return the trainer."""
    last = Path(cfg.output_dir) / LAST
    if last.is_file() and not resume:
        raise SystemExit(f"{cfg.output_dir} already holds a GAN run ({LAST}): pass --resume to continue it, "
                         "or choose another --output_dir=...")
    trainer = GanTrainer(cfg, verbose=verbose)
    if verbose:
        print(f"train.amp: {trainer.precision.describe()}; {len(trainer.patches.pool)} training instances of "
              f"classes {cfg.train.classes}, {len(trainer.patches.free_ids)} defect-free strips", flush=True)
    if resume and last.is_file():
        trainer.resume(last)
        if verbose:
            print(f"resumed from {last} at step {trainer.step}", flush=True)
    trainer.fit()
    return trainer


# ---------------------------------------------------------------- synthesis


def load_generator(checkpoint, overrides: Sequence[str] = ()) -> tuple[DefectGenerator, GanConfig]:
    """The generator of a GAN checkpoint and its stored config with ``overrides`` on top."""
    ckpt = load_checkpoint(checkpoint)
    cfg = load_gan_config(overrides=overrides, base=ckpt["config"])
    generator = build_generator(cfg)
    generator.load_state_dict(ckpt["generator"])
    return generator.eval(), cfg


def synthesize(checkpoint, out, per_class: dict[int, int], overrides: Sequence[str] = (), seed: int = 0,
               batch_size: int = 32, verbose: bool = True) -> dict:
    """Paint ``per_class[c]`` strips of class ``c`` and write ``out`` in the
    Severstal layout: ``train_images/gan_c<c>_<k>.jpg``, ``train.csv`` (last,
    so a folder with one is complete), ``synthesis.json`` and ``grid.png``
    (real patches of each class above generated ones). Each strip is a
    defect-free training strip with one shape painted in a patch window,
    composited by a feathered alpha over the mask grown by 2 pixels; its
    mask is the shape. Returns the summary written to synthesis.json."""
    out = Path(out)
    generator, cfg = load_generator(checkpoint, overrides)
    device = resolve_device(cfg.train.device)
    precision = resolve_amp(cfg.train.amp, device, key="train.amp")
    generator.to(device)
    if bad := sorted(set(per_class) - set(cfg.train.classes)):
        raise ValueError(f"{checkpoint} was trained on classes {cfg.train.classes}, not {bad}")
    patches = training_patches(cfg)
    p = cfg.model.patch
    rles: dict[str, dict[int, str]] = {}
    grid_rows = []
    total = sum(per_class.values())
    with tqdm(total=total, desc="synthesize", disable=not verbose, mininterval=5) as bar:
        for class_id, count in sorted(per_class.items()):
            shown = None
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                rng = np.random.default_rng([seed, class_id, start])
                windows = [patches.background(rng) for _ in range(n)]
                masks = np.stack([patches.shape(rng, class_id) for _ in range(n)])
                backgrounds = np.stack([patches.grey(i)[t:t + p, l:l + p] for i, t, l in windows])
                batch = {"image": backgrounds[:, None], "mask": masks[:, None],
                         "class_ids": np.full(n, class_id, np.int64),
                         "noise": rng.standard_normal((n, 1, p, p)).astype(np.float32)}
                fake = paint(generator, batch, device, precision)
                if shown is None:
                    shown = (fake[:6], masks[:6])
                for k, ((image_id, top, left), mask, painted) in enumerate(zip(windows, masks, fake)):
                    name = f"gan_c{class_id}_{start + k:05d}.jpg"
                    strip = patches.grey(image_id).copy()
                    grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                    alpha = feather_alpha(grown, 2)
                    window = strip[top:top + p, left:left + p]
                    strip[top:top + p, left:left + p] = alpha * painted + (1 - alpha) * window
                    grey = np.rint(strip * 255).clip(0, 255).astype(np.uint8)
                    path = out / "train_images" / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(path), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, 95]):
                        raise OSError(f"cannot write {path}")
                    full = np.zeros(patches.annotations.shape, np.uint8)
                    full[top:top + p, left:left + p] = mask
                    rles[name] = {class_id: rle_encode(full)}
                    bar.update(1)
            real = patches.batch(np.random.default_rng([seed, class_id, 2**31]), 6, [class_id])
            grid_rows += [tile_row(real["image"][:, 0], real["mask"][:, 0], f"real {class_id}"),
                          tile_row(shown[0], shown[1], f"gen {class_id}")]
    _write_png(out / "grid.png", _pad_rows(grid_rows))
    summary = {"checkpoint": str(checkpoint), "per_class": {str(c): n for c, n in sorted(per_class.items())},
               "seed": seed, "patch": p, "data_root": cfg.data.root, "fold": cfg.data.fold, "images": len(rles)}
    atomic_write_text(out / "synthesis.json", json.dumps(summary, indent=2) + "\n")
    write_mask_csv(out / "train.csv", rles)
    return summary


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
