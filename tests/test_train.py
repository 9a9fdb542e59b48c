"""The real train.py on a tiny synthetic dataset: smoke runs, resume, torchrun
and the promised config errors."""

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import train
from core.checkpoint import load_checkpoint
from core.config import to_dict
from core.precision import resolve_amp
from inference.metrics import dice_from_counts, kaggle_score, pair_counts
from models import load_model
from training import logger as logger_module
from training import trainer as trainer_module

REPO = Path(__file__).resolve().parents[1]


def tiny_args(root, out, *extra):
    """A run small enough for a unit test: 2 epochs x 2 steps of 4 crops, 4 val strips."""
    return ["--config", str(REPO / "configs/demo_cpu.yaml"), f"--data.root={root}", f"--output_dir={out}",
            "--data.num_workers=0", "--data.batch_size=4", "--data.val_batch_size=2", "--data.max_val_images=4",
            "--model.encoder=resnet18", "--train.epochs=2", "--train.max_steps_per_epoch=2",
            "--wandb.mode=disabled", "--data.crop_width=128", "--data.crop_height=128", *extra]


@pytest.mark.parametrize("cpu, val_every", [("avx2", 1), ("this", 2)])
def test_smoke_run_writes_checkpoints_config_metrics(tiny_data, tmp_path, monkeypatch, capsys, cpu, val_every):
    """The shipped demo config (train.amp auto): float32 on a CPU reported as
    AVX2-only, whatever this one is; on this CPU, what it supports. The
    resolved choice is what config.yaml and the checkpoint record."""
    if cpu == "avx2":
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    expected = resolve_amp("auto", "cpu").amp
    out = tmp_path / "run"
    record = train.main(tiny_args(tiny_data, out, f"--train.val_every={val_every}"))
    assert {"last.pt", "best.pt", "config.yaml", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4
    assert ckpt["config"]["train"]["amp"] == expected and ckpt["config"]["predict"]["amp"] == "auto"
    assert ckpt["precision"]["amp"] == expected and ckpt["precision"]["requested"] == "auto"
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] == expected
    assert f"train.amp: {'float32' if expected == 'off' else 'bf16 autocast'} (auto: " in capsys.readouterr().out
    if cpu == "avx2":
        assert expected == "off" and "AVX2" in ckpt["precision"]["reason"]
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert [("val" in l) for l in lines] == [val_every == 1, True]  # validated every val_every epochs and at the end
    assert 0.0 <= record["val"]["score"] <= 1.0 and set(record["val"]["per_class"]) == {"1", "2", "3", "4"}
    model, cfg = load_model(out / "best.pt")
    assert not model.training and cfg.train.amp == expected


def test_resume_after_kill_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train.main(tiny_args(tiny_data, straight, "--train.ema=0.9", "--data.class_balance=0.5"))

    interrupted = tmp_path / "interrupted"
    real_save = trainer_module.Trainer.save

    def save_then_die(self, name):
        real_save(self, name)
        if name == "last.pt" and self.epoch == 1:
            raise KeyboardInterrupt("simulated kill right after epoch 1's checkpoint")

    monkeypatch.setattr(trainer_module.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_args(tiny_data, interrupted, "--train.ema=0.9", "--data.class_balance=0.5"))
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 1
    monkeypatch.setattr(trainer_module.Trainer, "save", real_save)
    train.main(tiny_args(tiny_data, interrupted, "--train.ema=0.9", "--data.class_balance=0.5", "--resume"))

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(interrupted / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    epochs = [json.loads(l)["epoch"] for l in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_existing_run_needs_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(tiny_data, out, "--train.epochs=1"))
    with pytest.raises(SystemExit, match="--resume"):
        train.main(tiny_args(tiny_data, out, "--train.epochs=1"))


@pytest.mark.parametrize("override, message", [
    ("--train.epochz=3", "unknown key 'train.epochz'"),
    ("--train.amp=fp32", "'train.amp' = 'fp32' is not one of"),
    ("--optim.lr=fast", "'optim.lr' must be float"),
    ("--model.arch=Unett", "model.arch='Unett' is not an smp architecture"),  # checked by building on meta
    ("--model.arch_kwargs.decoder_chanels=[8,8,8,8,8]", "model.arch_kwargs.decoder_chanels: Unet takes no"),
])
def test_bad_config_fails_before_work(tmp_path, override, message):
    result = subprocess.run([sys.executable, "train.py", f"--output_dir={tmp_path / 'run'}", override],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_is_refused(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train.main(tiny_args(tiny_data, tmp_path / "run", "--train.amp=fp16", "--train.device=cpu"))


def single_process_score(checkpoint, root, val_ids):
    """Score a checkpoint's weights on whole strips, one process, no loader,
    float32 (bf16 kernels round differently for other batch shapes)."""
    from datasets.semantic import SeverstalSegmentation
    from datasets.severstal import Annotations

    model, cfg = load_model(checkpoint)
    ann = Annotations.load(Path(root) / "train.csv", Path(root) / "train_images")
    dataset = SeverstalSegmentation(ann, val_ids, crop=None)
    counts = []
    with torch.inference_mode():
        for image, target in dataset:
            probs = model(image[None]).float()
            counts.append(pair_counts(probs > cfg.train.val_threshold, target["masks"][None] > 0.5))
    import numpy as np

    return kaggle_score(dice_from_counts(np.concatenate(counts)))["score"]


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    args = tiny_args(tiny_data, out, "--train.epochs=1", "--data.max_val_images=5", "--train.amp=off")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val"]["n_images"] == 5  # odd count: no padded duplicates across ranks
    from core.config import load_config
    from training.data import load_run_data

    cfg = load_config(out / "config.yaml")
    val_ids = load_run_data(cfg).val_ids
    assert single_process_score(out / "last.pt", tiny_data, val_ids) == pytest.approx(record["val"]["score"], abs=1e-6)


def test_wandb_offline_needs_no_server(tiny_data, tmp_path, monkeypatch):
    """The default W&B mode logs an offline run with no login and no network."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    out = tmp_path / "run"
    train.main(tiny_args(tiny_data, out, "--wandb.mode=offline", "--train.epochs=1", "--train.max_steps_per_epoch=1"))
    assert list((out / "wandb").rglob("*.wandb")), "no offline run file written"
    assert load_checkpoint(out / "last.pt")["wandb_id"]


def test_wandb_config_records_the_resolved_precision(tiny_data, tmp_path, monkeypatch):
    """W&B's config holds what train.amp=auto resolved to, and why (the
    offline .wandb file has no Python reader, so the run is a stand-in)."""
    class RunConfig(dict):  # wandb.Config: a mapping with update(..., allow_val_change)
        def update(self, values, allow_val_change=False):
            super().update(values)

    runs = []

    def fake_init(cfg, resume_id):
        runs.append(SimpleNamespace(id="fake", sweep_id=None, config=RunConfig(to_dict(cfg)), summary={},
                                    log=lambda *args, **kwargs: None, finish=lambda: None))
        return runs[-1]

    monkeypatch.setattr(logger_module, "_init_wandb", fake_init)
    train.main(tiny_args(tiny_data, tmp_path / "run", "--wandb.mode=offline", "--train.epochs=1",
                         "--train.max_steps_per_epoch=1", "--train.n_overlays=0"))
    resolved = resolve_amp("auto", "cpu")
    [run] = runs
    assert run.config["train"]["amp"] == resolved.amp and run.config["precision"]["requested"] == "auto"
    assert run.config["precision"]["reason"] == resolved.reason


@pytest.mark.parametrize("args, message", [
    (["--archs", "FPN,Foo"], "bench_train.py: --archs Foo: model.arch='Foo' is not an smp architecture"),
    (["--model.encoder=resnet19"], "bench_train.py: model.encoder='resnet19' is not an smp encoder"),
])
def test_bench_train_refuses_a_bad_model_before_timing(args, message, tmp_path):
    bench = runpy.run_path(str(REPO / "scripts/bench_train.py"))["main"]
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench([*args, f"--data.root={tmp_path / 'absent'}"])
    assert not (tmp_path / "absent").exists()  # refused before the stand-in data is written
