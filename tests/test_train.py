"""The real train.py on a tiny synthetic dataset: smoke runs, resume, torchrun
and the promised config errors; the Trainer's step, its validation
pictures, and the benchmarks that time that step."""

import copy
import json
import os
import re
import runpy
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml

import predict
import train
from core.checkpoint import load_checkpoint
from core.config import load_config, to_dict
from core.precision import resolve_amp
from inference.metrics import dice_from_counts, kaggle_score, pair_counts
from inference.postprocess import PostProcess, TuneResult
from inference.predictor import RunSummary, has_class_head
from models import build_model, load_model
from training import logger as logger_module
from training import trainer as trainer_module
from training.data import build_train_dataset, load_run_data
from training.optim import build_ema, build_optimizer, build_scheduler
from training.trainer import local_trainer

REPO = Path(__file__).resolve().parents[1]


def tiny_args(root, out, *extra):
    """A run small enough for a unit test: 2 epochs x 2 steps of 4 crops, 4 val strips."""
    return ["--config", str(REPO / "configs/demo_cpu.yaml"), f"--data.root={root}", f"--output_dir={out}",
            "--data.num_workers=0", "--data.batch_size=4", "--data.val_batch_size=2", "--data.max_val_images=4",
            "--model.smp.encoder=resnet18", "--train.epochs=2", "--train.max_steps_per_epoch=2",
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
    record = train.main(tiny_args(tiny_data, out, f"--train.val_every={val_every}", "--train.device=cpu"))
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
    assert set(record["val"]["per_class"]) == {"1", "2", "3", "4"}
    val_ids = load_run_data(load_config(out / "config.yaml")).val_ids
    rescored = single_process_score(out / "last.pt", tiny_data, val_ids, amp=expected, batch_size=2)
    assert record["val"]["score"] == pytest.approx(rescored, abs=1e-6)  # the last epoch's weights, rescored
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
    ("--model.smp.arch=Unett", "model.smp.arch='Unett' is not an smp architecture"),  # checked by building on meta
    ("--model.smp.arch_kwargs.decoder_chanels=[8,8,8,8,8]", "model.smp.arch_kwargs.decoder_chanels: Unet takes no"),
])
def test_bad_config_fails_before_work(tmp_path, override, message):
    result = subprocess.run([sys.executable, "train.py", f"--output_dir={tmp_path / 'run'}", override],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_is_refused(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train.main(tiny_args(tiny_data, tmp_path / "run", "--train.amp=fp16", "--train.device=cpu"))


def single_process_score(checkpoint, root, val_ids, amp="off", batch_size=1, postprocess=None):
    """Score a checkpoint's weights on whole strips, one process, no loader,
    ``batch_size`` strips per call in ``amp`` (bf16 kernels round
    differently for other batch shapes: compare bf16 scores at the batch
    size that made them), inferred as the config's ``train.val_inference``
    says (predict.py's Predictor, or one pass per strip); at the config's
    threshold, or with ``postprocess`` (a PostProcess, fed the class
    probabilities when the model has a head)."""
    from dataclasses import replace

    from datasets.semantic import SeverstalSegmentation
    from datasets.severstal import Annotations
    from inference.predictor import Predictor

    model, cfg = load_model(checkpoint)
    ann = Annotations.load(Path(root) / "train.csv", Path(root) / "train_images")
    dataset = SeverstalSegmentation(ann, val_ids, crop=None)
    predictor = (Predictor([model], replace(cfg.predict, amp=amp, channels_last=cfg.train.channels_last))
                 if cfg.train.val_inference == "predict" else None)
    counts = []
    with torch.inference_mode(), resolve_amp(amp, "cpu").autocast():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images, targets = dataset.collate_fn(items)
            if predictor is not None:
                probs, class_probs = predictor.predict_probs(images)
            else:
                probs = model(images).float()
                class_probs = model.class_probs(images).float() if has_class_head(model) else None
            truth = targets["masks"] > 0.5
            if postprocess is None:
                counts.append(pair_counts(probs > cfg.train.val_threshold, truth))
                continue
            class_probs = [None] * len(probs) if class_probs is None else class_probs
            counts += [pair_counts(postprocess(p, c), t) for p, c, t in zip(probs, class_probs, truth)]

    return kaggle_score(dice_from_counts(np.concatenate(counts)))["score"]


def test_checkpoint_carries_postprocessing_tuned_on_its_validation_and_predict_applies_it(
        tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    record = train.main(tiny_args(tiny_data, out, "--train.epochs=1", "--train.max_steps_per_epoch=1",
                                  "--train.amp=off"))
    ckpt = load_checkpoint(out / "best.pt")
    tuned = PostProcess(**ckpt["tuned"]["postprocess"])
    assert PostProcess.from_json(out / "postprocess.json") == tuned  # the json beside best.pt
    stored = ckpt["config"]["postprocess"]
    assert [stored[k] for k in ("threshold", "min_component_area", "min_total_area", "gate")] == \
        [tuned.threshold, tuned.min_component_area, tuned.min_total_area, tuned.gate]
    assert stored["source"].startswith("tuned on the validation fold at epoch 1 (4 images: score ")
    val_ids = load_run_data(load_config(out / "config.yaml")).val_ids
    rescored = single_process_score(out / "best.pt", tiny_data, val_ids, batch_size=2, postprocess=tuned)
    assert record["val"]["tuned"]["score"] == pytest.approx(rescored, abs=1e-6)
    assert record["val"]["tuned"]["score"] >= record["val"]["score"] - 1e-9  # threshold 0.5 alone is on the grid
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["val"]
    assert logged["score"] == record["val"]["score"] and logged["tuned"]["score"] == record["val"]["tuned"]["score"]

    applied = []
    def record(predictor, postprocess, image_dir, out_dir, *args, **kwargs):  # predict_folder, no images read
        applied.append(postprocess)
        return RunSummary(Path(out_dir) / "submission.csv", 0, 0, 0, {})

    monkeypatch.setattr(predict, "predict_folder", record)
    predict.main(["--checkpoint", str(out / "best.pt"), "--images", str(tiny_data / "test_images"),
                  "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert applied == [tuned]
    assert f"post-processing: {out / 'best.pt'}, tuned on the validation fold at epoch 1" in capsys.readouterr().out
    predict.main(["--checkpoint", str(out / "best.pt"), "--images", str(tiny_data / "test_images"),
                  "--out", str(tmp_path / "pred"), "--device", "cpu", "--postprocess.threshold=[0.9,0.9,0.9,0.9]"])
    assert applied[-1].threshold == [0.9] * 4 and applied[-1].min_total_area == tuned.min_total_area


@pytest.mark.parametrize("select, best_epoch", [("tuned", 2), ("threshold", 1)])
def test_best_checkpoint_follows_train_select(tiny_data, tmp_path, monkeypatch, select, best_epoch):
    """Epoch 1 scores better at threshold 0.5, epoch 2 once tuned."""
    scores = {1: (0.9, 0.5), 2: (0.5, 0.9)}

    def fake_evaluate(self):
        score, tuned = scores[self.epoch]
        self.tuned = TuneResult(PostProcess(threshold=[tuned] * 4), {"score": score}, {"score": tuned}, 4)
        return {"score": score, "per_class": {}, "empty_baseline": 0.5, "tuned": {"score": tuned, "per_class": {}}}, {}

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", fake_evaluate)
    out = tmp_path / "run"
    train.main(tiny_args(tiny_data, out, "--train.val_every=1", "--train.max_steps_per_epoch=1",
                         f"--train.select={select}"))
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == best_epoch and best["best_score"] == 0.9
    assert PostProcess.from_json(out / "postprocess.json").threshold == [scores[best_epoch][1]] * 4


def test_resume_restores_the_tuned_postprocessing(tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(tiny_data, out, "--train.epochs=1", "--train.max_steps_per_epoch=1", "--train.amp=off"))
    saved = load_checkpoint(out / "last.pt")
    cfg = load_config(out / "config.yaml")
    data = load_run_data(cfg)
    model = build_model(cfg)
    trainer = local_trainer(cfg, model, build_train_dataset(cfg, data, model.target_kind),
                            resolve_amp("off", "cpu"))
    trainer.resume(out / "last.pt")
    assert trainer.tuned_epoch == 1 and {**asdict(trainer.tuned), "epoch": 1} == saved["tuned"]
    assert trainer.state_dict()["config"]["postprocess"] == saved["config"]["postprocess"]


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    # float32 throughout: validation infers in predict.amp (train.val_inference=predict)
    args = tiny_args(tiny_data, out, "--train.epochs=1", "--data.max_val_images=5", "--train.amp=off",
                     "--predict.amp=off")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val"]["n_images"] == 5  # odd count: no padded duplicates across ranks
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
                         "--train.max_steps_per_epoch=1", "--train.n_overlays=0", "--train.device=cpu"))
    resolved = resolve_amp("auto", "cpu")
    [run] = runs
    assert run.config["train"]["amp"] == resolved.amp and run.config["precision"]["requested"] == "auto"
    assert run.config["precision"]["reason"] == resolved.reason


@pytest.mark.parametrize("args, message", [
    (["--archs", "FPN,Foo"], "bench_train.py: --archs Foo: model.smp.arch='Foo' is not an smp architecture"),
    (["--model.smp.encoder=resnet19"], "bench_train.py: model.smp.encoder='resnet19' is not an smp encoder"),
])
def test_bench_train_refuses_a_bad_model_before_timing(args, message, tmp_path):
    bench = runpy.run_path(str(REPO / "scripts/bench_train.py"))["main"]
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench([*args, f"--data.root={tmp_path / 'absent'}"])
    assert not (tmp_path / "absent").exists()  # refused before the stand-in data is written


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_bench_train_times_both_validation_modes_side_by_side(tiny_data, capsys):
    bench = runpy.run_path(str(REPO / "scripts/bench_train.py"))["main"]
    bench(["--steps", "1", "--samples", "2", "--validation", "2", f"--data.root={tiny_data}",
           "--model.smp.encoder=resnet18", "--data.batch_size=2", "--data.num_workers=0"])
    lines = {l[:38].strip(): l[38:].split() for l in capsys.readouterr().out.splitlines()}
    amp = resolve_amp("auto", "cpu").amp  # the demo config's train.amp and predict.amp are both auto
    predict_s, whole_s = (float(lines[f"validation s/strip, {m} ({amp})"][0]) for m in ("predict", "whole"))
    assert predict_s > 0 and whole_s > 0
    assert float(lines["validation predict / whole"][0].rstrip("x")) == pytest.approx(predict_s / whole_s, rel=0.1)


class TinySegmentation(torch.utils.data.Dataset):
    """``n`` random 64x64 images, each with one rectangle of class 1: the
    semantic dataset contract (docs/CONTRACTS.md) without files."""

    collate_fn = staticmethod(torch.utils.data.default_collate)

    def __init__(self, n: int):
        self.images = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        masks = torch.zeros(4, 64, 64)
        masks[0, 8:24, 4 * index : 4 * index + 32] = 1
        return self.images[index], {"masks": masks, "labels": masks.amax((1, 2)), "image_id": str(index)}

    def set_seed(self, seed: int) -> None:
        """Nothing is drawn: the items are fixed."""


def tiny_trainer(dataset, **train):
    """A float32 CPU Trainer of a resnet18 Unet (no weights), 2 images per batch, ``train.*`` set from ``train``."""
    cfg = load_config(overrides=["--model.smp.encoder=resnet18", "--data.batch_size=2", "--data.num_workers=0",
                                 "--train.amp=off", "--train.epochs=2", "--optim.warmup_epochs=1", "--loss.dice=0.5"])
    for key, value in train.items():
        setattr(cfg.train, key, value)
    torch.manual_seed(0)
    model = build_model(cfg)
    return trainer_module.local_trainer(cfg, model, dataset, resolve_amp("off", "cpu")), cfg


def test_train_step_is_one_clipped_accumulated_step_with_ema_and_schedule():
    """train_step([b1, b2]) against the step written out by hand: the mean
    loss of two micro-batches backpropagated, clipped, stepped, averaged
    into the EMA, then the schedule advanced."""
    dataset = TinySegmentation(4)
    trainer, cfg = tiny_trainer(dataset, accum_steps=2, clip_grad=0.05, ema=0.9)
    reference = copy.deepcopy(trainer.raw_model)
    optimizer = build_optimizer(reference, cfg.optim)
    scheduler, _ = build_scheduler(optimizer, cfg.optim, trainer.steps_per_epoch, cfg.train.epochs)
    ema = build_ema(reference, cfg.train.ema)
    batches = [dataset.collate_fn([dataset[2 * k], dataset[2 * k + 1]]) for k in range(2)]

    logged = trainer.train_step(batches)

    expected = {}
    for images, targets in batches:
        losses = reference(images, targets)
        (sum(losses.values()) / 2).backward()
        for name, value in [*losses.items(), ("loss", sum(losses.values()))]:
            expected[name] = expected.get(name, 0.0) + float(value.detach()) / 2
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.train.clip_grad)
    assert norm > cfg.train.clip_grad  # the clipping did something
    optimizer.step()
    ema.update_parameters(reference)
    scheduler.step()
    assert logged == pytest.approx(expected, rel=1e-6) and set(logged) == {"loss_bce", "loss_dice", "loss"}
    for mine, theirs in [(trainer.raw_model, reference), (trainer.ema.module, ema.module)]:
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name  # the same operations in the same order
    assert trainer.step == 1 and trainer.optimizer.param_groups[-1]["lr"] == optimizer.param_groups[-1]["lr"]
    assert all(p.grad is None for p in trainer.raw_model.parameters())  # ready for the next step


def test_train_one_epoch_takes_its_steps_through_train_step(monkeypatch):
    """3 batches at accum_steps=2: one step of 2 micro-batches, one of 1; the
    epoch's losses are the mean over micro-batches."""
    trainer, _ = tiny_trainer(TinySegmentation(7), accum_steps=2)
    steps = []
    real_step = trainer_module.Trainer.train_step

    def recorded(self, batches):
        steps.append((len(batches), real_step(self, batches)))
        return steps[-1][1]

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recorded)
    means = trainer.train_one_epoch(1)
    assert [n for n, _ in steps] == [2, 1] and trainer.step == 2
    assert means == pytest.approx({k: (2 * steps[0][1][k] + steps[1][1][k]) / 3 for k in means}, rel=1e-6)


def test_validation_overlay_shows_the_strip_in_bgr():
    """overlay_panel draws on BGR (cv2): a pure red RGB strip must come out
    red, i.e. cv2 reads the panel back as RGB (255, 0, 0)."""
    images = torch.zeros(1, 3, 32, 64)
    images[:, 0] = 1.0  # the red channel of an RGB tensor
    empty = torch.zeros(1, 4, 32, 64)
    panels = trainer_module.Trainer._overlays(images, empty > 0, {"masks": empty, "image_id": ["a.jpg"]}, n=1)
    strip = panels["val/a.jpg"][-32:]  # the truth strip, nothing outlined on it
    assert (cv2.cvtColor(strip, cv2.COLOR_BGR2RGB) == (255, 0, 0)).all()


def recorded_train_step(calls: list):
    """A stand-in for ``Trainer.train_step`` in a benchmark: appends what it
    was asked to time to ``calls`` (precision, micro-batches, the first
    one's image shape, the model's RoIs per image when it has RoI heads)
    and returns at once."""

    def train_step(trainer, batches):
        roi_heads = getattr(getattr(trainer.raw_model, "net", None), "roi_heads", None)
        rois = roi_heads.fg_bg_sampler.batch_size_per_image if roi_heads is not None else None
        calls.append((trainer.precision.amp, len(batches), tuple(batches[0][0].shape), rois))
        return {"loss": 0.0}

    return train_step


def test_bench_train_times_the_trainers_step(tiny_data, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step", recorded_train_step(calls))
    bench = runpy.run_path(str(REPO / "scripts/bench_train.py"))["main"]
    bench(["--steps", "1", "--samples", "2", f"--data.root={tiny_data}", "--data.batch_size=2"])
    shape = (2, 3, 256, 128)  # demo_cpu.yaml's crops
    assert calls == [("off", 1, shape, None)] * 3 + [("bf16", 1, shape, None)] * 3  # 2 untimed + 1 timed each
    out = capsys.readouterr().out
    for line in ("native bf16", "train images/s, float32", "train images/s, bf16 autocast", "bf16 / float32",
                 "one worker / fastest training"):
        assert line in out


def test_bench_maskrcnn_times_the_trainers_step(tiny_data, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step", recorded_train_step(calls))
    bench = runpy.run_path(str(REPO / "scripts/bench_maskrcnn.py"))["main"]
    bench(["--steps", "1", f"--data.root={tiny_data}", "--data.batch_size=1"])
    amp = resolve_amp("auto", "cpu").amp
    # torchvision's 512 RoIs, then the config's 64: on 256x256 crops, then its own 256x128
    assert calls == ([(amp, 1, (1, 3, 256, 256), 512)] * 3 + [(amp, 1, (1, 3, 256, 256), 64)] * 3
            + [(amp, 1, (1, 3, 256, 128), 64)] * 3)
    out = capsys.readouterr().out
    assert "native bf16" in out and "speed-up" in out and out.count("x\n") == 3


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draws() == expected
