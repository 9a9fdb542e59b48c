"""The classical pipeline (models/classical.py): what it finds on drawn
strips, its parameters as a state dict, its search (workflows/classical_search.py)
and its pictures through predict.py."""

import cv2
import numpy as np
import pytest
import torch

import predict
import train
from core.config import load_config, to_dict
from models import build_model, load_model
from models.classical import PARAM_SPACE, ClassicalPipeline, class_scores
from workflows.classical_search import masked_dice, stratified_sample

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (256, 640)


def flat_strip(seed: int = 0) -> np.ndarray:
    """float32 [H, W] grey 120 with a little sensor noise."""
    return (120 + np.random.default_rng(seed).normal(0, 2, SHAPE)).astype(np.float32)


def as_images(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey / 255).float().expand(1, 3, -1, -1).clamp(0, 1)


def test_flat_strip_scores_nothing():
    scores = ClassicalPipeline().eval()(as_images(flat_strip()))
    assert scores.shape == (1, 4, *SHAPE) and scores.dtype == torch.float32
    assert scores.max() < 0.5


def test_dark_blob_of_pits_is_class_1_where_it_is():
    grey = flat_strip()
    rng = np.random.default_rng(1)
    for x, y in rng.normal((200, 128), 8, (12, 2)):  # a cluster of dark pits
        cv2.circle(grey, (int(x), int(y)), 2, 50.0, -1)
    scores = class_scores(grey, ClassicalPipeline().params())
    assert scores[0, 128, 200] > 0.5  # inside the cluster
    assert scores[0, :, 400:].max() < 0.5  # far from it
    assert (scores[0] > 0.5).sum() > 200  # a region, not a few pixels


def test_thin_bright_line_across_is_class_2_along_is_class_3():
    across, along = flat_strip(), flat_strip(1)
    cv2.line(across, (300, 10), (303, 245), 190.0, 2)
    cv2.line(along, (100, 120), (560, 123), 190.0, 2)
    params = ClassicalPipeline().params()
    s_across, s_along = class_scores(across, params), class_scores(along, params)
    assert s_across[1, 128, 301] > 0.5 and s_across[1, :, 450:].max() < 0.5
    assert s_along[2, 121, 330] > 0.5 and s_along[2, 200:, :].max() < 0.5
    assert s_across[2].max() < 0.5  # a line across is not a mark along


def test_off_strip_frame_scores_nothing():
    grey = flat_strip()
    grey[:, :150] = 3.0  # the frame beyond the strip's edge
    assert class_scores(grey, ClassicalPipeline().params()).max() < 0.5


def test_parameters_save_and_reload_to_the_same_output(tmp_path):
    rng = np.random.default_rng(3)
    params = {name: p.low + (p.high - p.low) * rng.random() for name, p in PARAM_SPACE.items()}
    model = ClassicalPipeline(params).eval()
    path = tmp_path / "params.pt"
    torch.save(model.state_dict(), path)
    reloaded = ClassicalPipeline().eval()
    reloaded.load_state_dict(torch.load(path, weights_only=True))
    assert reloaded.params() == model.params() != ClassicalPipeline().params()
    grey = flat_strip()
    cv2.circle(grey, (300, 100), 6, 40.0, -1)
    images = as_images(grey)
    assert torch.equal(model(images), reloaded(images))


def test_train_mode_refuses_gradient_training():
    with pytest.raises(RuntimeError, match="parameter search"):
        ClassicalPipeline().train()(as_images(flat_strip()))


def test_stratified_sample_weights_estimate_the_plain_mean():
    ids = [f"{i}.jpg" for i in range(100)]
    has = [i < 10 for i in range(100)]
    sample, weights = stratified_sample(ids, has, 20, seed=0)
    assert len(sample) == 20 and sum(h for i, h in zip(ids, has) if i in sample) == 10
    assert sum(weights) == pytest.approx(1.0)
    values = {i: (1.0 if h else 0.0) for i, h in zip(ids, has)}  # a per-image Dice: mean 0.1
    assert np.dot([values[i] for i in sample], weights) == pytest.approx(0.1)


def test_masked_dice_applies_minimum_areas():
    truth = np.zeros((20, 20), np.uint8)
    truth[2:8, 2:8] = 1
    score = np.zeros((20, 20), np.float32)
    score[2:8, 2:8] = 0.9
    score[15, 15] = 0.9  # a lone pixel
    assert masked_dice(score, truth, 0, 0) == pytest.approx(2 * 36 / 73)
    assert masked_dice(score, truth, 2, 0) == 1.0
    assert masked_dice(score, np.zeros_like(truth), 0, 100) == 1.0  # 37 pixels wiped


@pytest.mark.slow
def test_train_py_fits_and_predict_py_draws_the_steps(tiny_data, tmp_path):
    out = tmp_path / "classical"
    train.main(["--config", "configs/classical.yaml", f"--data.root={tiny_data}", f"--output_dir={out}",
                "--model.classical.trials=2", "--model.classical.fit_images=6"])
    model, cfg = load_model(out / "best.pt")
    assert cfg.model.name == "classical" and "fitted" in cfg.postprocess.source
    assert (out / "postprocess.json").is_file() and (out / "last.pt").is_file()
    summary = predict.main(["--checkpoint", str(out / "best.pt"), "--images", str(tiny_data / "test_images"),
                            "--out", str(tmp_path / "pred"), "--overlays", "--predict.num_workers=0"])
    assert summary.n_written == 6
    overlay = cv2.imread(str(next((tmp_path / "pred" / "overlays").glob("*.jpg"))))
    assert overlay.shape[0] > 6 * 256  # the strip twice (prediction) plus six maps of the pipeline's steps
    assert (tmp_path / "pred" / "image_scores.csv").is_file()


def test_registered_and_built_from_config():
    cfg = load_config(None, ["--model.name=classical", "--model.classical.trials=7"])
    model = build_model(cfg)
    assert isinstance(model, ClassicalPipeline) and model.target_kind == "semantic"
    assert to_dict(cfg)["model"]["classical"] == {"trials": 7, "fit_images": 100}
