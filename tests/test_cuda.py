"""What only a CUDA device can show: fp16 training with a GradScaler through
the Trainer, channels_last training and inference against contiguous ones,
and the predictor on the GPU against the CPU. Skipped without CUDA
(tests/conftest.py); each runs in seconds on one GPU."""

import copy
import math

import pytest
import torch

from core.config import Config, PredictConfig
from core.precision import resolve_amp
from inference.predictor import Predictor
from models import build_model
from training.trainer import local_trainer

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def tiny_config(**train) -> Config:
    """A resnet18 Unet (no weights), 2 images per batch, SGD (an update linear in the gradient)."""
    cfg = Config()
    cfg.model.smp.encoder = "resnet18"
    cfg.data.batch_size = 2
    cfg.optim.name, cfg.optim.lr = "sgd", 0.01
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def items(n: int = 2, size: int = 64) -> list:
    """``n`` semantic dataset items: float32 [3, size, size] images, one rectangle of class 1 each."""
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = []
    for image in images:
        masks = torch.zeros(4, size, size)
        masks[0, 8:24, 8:40] = 1
        out.append((image * 0.5 + masks[:1] * 0.5, {"masks": masks, "labels": masks.amax((1, 2)), "image_id": "x"}))
    return out


def trainer_on_cuda(cfg: Config, amp: str, train_set: list):
    torch.manual_seed(0)
    return local_trainer(cfg, build_model(cfg), train_set, resolve_amp(amp, CUDA, key="train.amp"))


def test_fp16_training_takes_finite_steps_through_the_grad_scaler():
    train_set = items()
    batch = torch.utils.data.default_collate(train_set)
    trainer = trainer_on_cuda(tiny_config(amp="fp16"), "fp16", train_set)
    assert trainer.precision.amp == "fp16" and trainer.scaler.is_enabled()
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    losses = [trainer.train_step([batch]) for _ in range(4)]
    assert all(math.isfinite(v) for step in losses for v in step.values()), losses
    assert trainer.step == 4 and trainer.scaler.get_scale() > 0
    after = list(trainer.raw_model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the scaler let at least one step through


def test_channels_last_trains_and_predicts_like_contiguous(monkeypatch):
    """One float32 step, then a tiled prediction, in each memory format; TF32
    off, so the formats differ only by the order of float32 sums."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    train_set = items()
    batch = torch.utils.data.default_collate(train_set)
    strip = torch.rand(1, 3, 256, 512, generator=torch.Generator().manual_seed(1))
    runs = []
    for channels_last in (False, True):
        trainer = trainer_on_cuda(tiny_config(amp="off", channels_last=channels_last), "off", train_set)
        conv = next(p for p in trainer.raw_model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        losses = trainer.train_step([batch])
        predictor = Predictor([trainer.raw_model], PredictConfig(amp="off", channels_last=channels_last), CUDA)
        probs, _ = predictor.predict_probs(strip)
        weights = {k: v.float().cpu() for k, v in trainer.raw_model.state_dict().items()}
        runs.append((losses, weights, probs))
    (losses, weights, probs), (losses_cl, weights_cl, probs_cl) = runs
    assert losses_cl == pytest.approx(losses, rel=1e-4)
    for name, value in weights.items():
        assert torch.allclose(weights_cl[name], value, rtol=1e-4, atol=1e-5), name
    assert probs_cl.shape == probs.shape == (1, 4, 256, 512)
    # an untrained net amplifies the weights' 1e-6 differences: on a CPU, 6e-4 at most, 2e-5 on average
    difference = (probs_cl - probs).abs()
    assert difference.max() < 5e-3 and difference.mean() < 2e-4, (difference.max(), difference.mean())


@pytest.mark.parametrize("amp, max_error, mean_error", [
    ("off", 2e-3, 1e-4),  # float32 (TF32 off): the kernels' summation order only
    # bf16 from Ampere on (fp16 before, closer): on a CPU with native bf16 this untrained net's
    # probabilities moved by 0.12 at most and 0.011 on average
    ("auto", 0.25, 0.03),
])
def test_cuda_prediction_matches_the_cpu_within_its_precision(monkeypatch, amp, max_error, mean_error):
    """A tiled prediction on the GPU in ``predict.amp=amp`` against float32
    on the CPU. BatchNorm statistics are taken from the strip first, so
    activations are of order 1, as in a trained model."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = build_model(tiny_config())
    strip = torch.rand(1, 3, 256, 512, generator=torch.Generator().manual_seed(1))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one pass sets the strip's statistics
    with torch.no_grad():
        model.train()(strip, {"masks": torch.zeros(1, 4, 256, 512)})
    model.eval()
    cpu, _ = Predictor([copy.deepcopy(model)], PredictConfig(amp="off"), "cpu").predict_probs(strip)
    gpu_predictor = Predictor([model], PredictConfig(amp=amp), CUDA)
    gpu, _ = gpu_predictor.predict_probs(strip)
    assert gpu_predictor.precision.amp in (("off",) if amp == "off" else ("bf16", "fp16"))
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32 and gpu.shape == cpu.shape == (1, 4, 256, 512)
    difference = (gpu - cpu).abs()
    assert difference.max() < max_error and difference.mean() < mean_error, (difference.max(), difference.mean())


def test_rng_state_loaded_onto_the_gpu_restores_every_generator(tmp_path):
    """A resume on CUDA loads the checkpoint with map_location=cuda, which moves the saved RNG states to the GPU."""
    import random

    import numpy as np

    from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    def draws():
        return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, device=CUDA)))

    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    state = load_checkpoint(tmp_path / "rng.pt", map_location=CUDA)["rng"]
    assert state["torch"].device.type == "cuda"
    set_rng_state(state)
    assert draws() == expected
