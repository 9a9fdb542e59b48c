"""Run logging on rank 0: a per-epoch metrics.jsonl and Weights & Biases.

W&B defaults to offline mode: it never prompts for a login and needs no
network; `wandb sync` uploads an offline run later. Under a sweep agent the
agent's values arrive as ``--key=value`` arguments; values found only in the
run's W&B config (agents launched without ``${args}``) are applied too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.config import Config, set_dotted, to_dict
from inference.visualize import write_image


class RunLogger:
    """Writes metrics to ``output_dir/metrics.jsonl`` and to W&B; a no-op
    off rank 0."""

    def __init__(self, cfg: Config, is_main: bool, resume_id: str | None = None):
        self.is_main = is_main
        self.run = None
        self.metrics_path = Path(cfg.output_dir) / "metrics.jsonl"
        if is_main and cfg.wandb.mode != "disabled":
            self.run = _init_wandb(cfg, resume_id)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def sweep_overrides(self, cfg: Config) -> bool:
        """Apply dotted keys a sweep put into the W&B config (rank 0 only);
        True when there was a sweep to apply."""
        if self.run is None or not getattr(self.run, "sweep_id", None):
            return False
        for key, value in dict(self.run.config).items():
            if "." in key:
                set_dotted(cfg, key, value, source="W&B sweep")
        self.run.config.update(to_dict(cfg), allow_val_change=True)
        return True

    def update_config(self, values: dict) -> None:
        """Record ``values`` (nested sections) in the W&B run's config."""
        if self.run is not None:
            self.run.config.update(values, allow_val_change=True)

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop metric lines of epochs the checkpoint does not hold."""
        if not self.is_main or not self.metrics_path.exists():
            return
        lines = [l for l in self.metrics_path.read_text().splitlines() if l.strip()]
        kept = [l for l in lines if json.loads(l).get("epoch", 0) <= epoch]
        self.metrics_path.write_text("".join(l + "\n" for l in kept))

    def log_step(self, values: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def log_epoch(self, record: dict, step: int, images: dict[str, np.ndarray] | None = None) -> None:
        if not self.is_main:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, image in (images or {}).items():  # also on disk: W&B may be disabled
            write_image(self.metrics_path.parent / "overlays" / f"epoch{record['epoch']:03d}_{Path(name).stem}.jpg",
                        image)
        if self.run is not None:
            import wandb

            payload = {k: v for k, v in _flatten(record).items() if k != "epoch"}
            payload["epoch"] = record["epoch"]
            for name, image in (images or {}).items():
                payload[name] = wandb.Image(image[..., ::-1], caption=name)  # BGR -> RGB
            self.run.log(payload, step=step)

    def finish(self, summary: dict | None = None) -> None:
        if self.run is not None:
            for key, value in (summary or {}).items():
                self.run.summary[key] = value
            self.run.finish()


def _init_wandb(cfg: Config, resume_id: str | None):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.wandb.name,
        group=cfg.wandb.group, tags=cfg.wandb.tags or None, config=to_dict(cfg), dir=cfg.output_dir,
        id=resume_id, resume="allow" if resume_id else None,
    )


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out
