"""The autoencoder anomaly detector (models/autoencoder.py): SSIM, the loss
dict, a short fit on clean steel that then fails to reconstruct a drawn
defect, and its files through predict.py."""

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import predict
from core.checkpoint import save_checkpoint
from core.config import AutoencoderConfig, load_config, to_dict
from datasets.io import read_image
from datasets.synthetic import steel_background
from inference.image_scores import read_anomaly_png
from models import build_model
from models.anomaly_score import image_score
from models.autoencoder import ConvAutoencoder, ssim_map

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = AutoencoderConfig(channels=[8, 16], latent_channels=4)


def clean_steel(seed: int, shape=(64, 128)) -> torch.Tensor:
    """float32 [1, 3, H, W] in [0, 1]: a crop of the synthetic steel background."""
    grey = steel_background(np.random.default_rng(seed))[: shape[0], : shape[1]] / 255
    return torch.from_numpy(np.clip(grey, 0, 1)).float().expand(1, 3, -1, -1).contiguous()


def with_dark_blob(images: torch.Tensor, centre=(40, 30), radius=5) -> tuple[torch.Tensor, np.ndarray]:
    grey = images[0, 0].numpy().copy()
    blob = np.zeros_like(grey, np.uint8)
    cv2.circle(blob, centre, radius, 1, -1)
    grey[blob > 0] -= 0.35
    return torch.from_numpy(grey).clamp(0, 1).expand(1, 3, -1, -1).contiguous(), blob > 0


def test_ssim_is_one_on_itself_and_falls_with_noise():
    x = clean_steel(0)[:, :1]
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x), atol=1e-4)
    noisy = (x + 0.05 * torch.randn_like(x, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    noisier = (x + 0.2 * torch.randn_like(x, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 1 > ssim_map(x, noisy).mean() > ssim_map(x, noisier).mean()
    assert torch.allclose(ssim_map(x, noisy), ssim_map(noisy, x), atol=1e-6)


def test_train_mode_returns_the_weighted_loss_dict():
    model = ConvAutoencoder(AutoencoderConfig(channels=[8], latent_channels=4, l1=1.0, l2=0.5, ssim=0.0))
    losses = model.train()(clean_steel(0), targets=None)
    assert set(losses) == {"loss_l1", "loss_l2"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 and v > 0 for v in losses.values())


def test_eval_mode_gives_the_anomaly_map_in_every_class_channel():
    maps = ConvAutoencoder(TINY).eval()(clean_steel(0))
    assert maps.shape == (1, 4, 64, 128) and maps.dtype == torch.float32
    assert 0 <= maps.min() and maps.max() <= 1
    assert torch.equal(maps[:, 0], maps[:, 3])


def test_short_fit_reconstructs_clean_better_than_defective_and_map_peaks_on_defect():
    torch.manual_seed(0)
    model = ConvAutoencoder(TINY)
    crops = torch.cat([clean_steel(seed) for seed in range(2)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(60):
        batch = crops.flip(-1) if step % 2 else crops
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    clean = clean_steel(0)
    defective, blob = with_dark_blob(clean)
    with torch.no_grad():
        grey_clean, grey_defective = clean.mean(1, keepdim=True), defective.mean(1, keepdim=True)
        error_clean = (model.reconstruct(grey_clean) - grey_clean).abs()[0, 0].numpy()
        error_defective = (model.reconstruct(grey_defective) - grey_defective).abs()[0, 0].numpy()
        anomaly = model(defective)[0, 0].numpy()
    assert error_defective.mean() > error_clean.mean()
    assert error_defective[blob].mean() > 2 * error_clean[blob].mean()  # the same pixels, clean and with the blob
    peak = np.unravel_index(anomaly.argmax(), anomaly.shape)
    near_blob = cv2.dilate(blob.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert near_blob[peak], f"anomaly peaks at {peak}, away from the blob"
    assert anomaly[blob].mean() > 2 * anomaly[~near_blob].mean()


def test_predict_py_writes_16_bit_maps_and_anomaly_scores(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, ["--model.name=autoencoder", "--model.autoencoder.channels=[8, 16]"])
    model = build_model(cfg)
    save_checkpoint({"model": model.state_dict(), "ema": None, "config": to_dict(cfg), "epoch": 1, "step": 1,
                     "best_score": 0.0}, tmp_path / "ae.pt")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        grey = (clean_steel(i, (64, 256))[0, 0].numpy() * 255).astype(np.uint8)
        cv2.imwrite(str(images / f"s{i}.jpg"), cv2.merge([grey] * 3))
    out = tmp_path / "out"
    predict.main(["--checkpoint", str(tmp_path / "ae.pt"), "--images", str(images), "--out", str(out),
                  "--predict.tile=64", "--predict.stride=64", "--predict.num_workers=0"])
    anomaly = read_anomaly_png(out / "anomaly" / "s0.png")
    assert anomaly.shape == (64, 256) and anomaly.dtype == np.uint16
    scores = pd.read_csv(out / "anomaly_scores.csv")
    assert scores.columns.tolist() == ["ImageId", "score"] and scores["ImageId"].tolist() == ["s0.jpg", "s1.jpg"]
    grey = read_image(images / "s0.jpg")[..., 0]
    expected = image_score(anomaly / 65535, grey, "top_mean", margin=32, k=500)  # the config's default statistic
    assert scores["score"].iloc[0] == pytest.approx(expected, abs=1e-4) and expected < anomaly.max() / 65535
    image_scores = pd.read_csv(out / "image_scores.csv")
    assert image_scores.columns.tolist() == ["ImageId", "score", "score_1", "score_2", "score_3", "score_4"]
