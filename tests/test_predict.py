"""predict.py and inference.predictor: outputs, bad files, resume, checkpoint
averaging, and a round trip from truth masks to a perfect score.

Real checkpoints are random tiny U-Nets (their masks are noise; the tests
check shapes, files and bookkeeping). Exact results come from a 'model'
that reads the class painted into each pixel, so tiling, stitching, RLE
and the submission must reproduce the truth exactly.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import predict
from core.checkpoint import save_checkpoint
from core.classes import CLASS_IDS
from core.config import ConfigError, PredictConfig, load_config, to_dict
from core.distributed import DistInfo, init_distributed
from datasets.io import ImageReadError
from datasets.rle import rle_decode, rle_encode
from datasets.severstal import COMPETITION, RERELEASED, write_mask_csv
from inference import predictor as predictor_module
from inference.postprocess import PostProcess, load_probs
from inference.predictor import (
    Journal,
    Predictor,
    class_map,
    has_class_head,
    missing_probs,
    predict_folder,
    predict_probs_files,
    read_journals,
    same_size_groups,
)
from models import build_model

REPO = Path(__file__).resolve().parents[1]
STRIP = (256, 1600)  # (H, W)
PAINT_STEP = 40  # the painted-class images: pixel value 40 * class id


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny_checkpoint(path: Path, seed: int, *overrides: str) -> Path:
    """A random model (U-Net resnet18 unless ``overrides`` say otherwise) saved
    with the keys load_model reads, as the trainer saves them."""
    torch.manual_seed(seed)
    cfg = load_config(None, ["--model.smp.encoder=resnet18", *overrides])
    model = build_model(cfg)
    save_checkpoint({"model": model.state_dict(), "ema": None, "config": to_dict(cfg), "epoch": 1, "step": 1,
                     "best_score": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return save_tiny_checkpoint(folder / "a.pt", 0), save_tiny_checkpoint(folder / "b.pt", 1)


def noise_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def write_images(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        assert cv2.imwrite(str(folder / name), image)
    return folder


def run_predict(checkpoints, images: Path, out: Path, *extra) -> predictor_module.RunSummary:
    return predict.main(["--checkpoint", *map(str, checkpoints), "--images", str(images), "--out", str(out),
                         "--device", "cpu", "--predict.num_workers=0", *map(str, extra)])


def read_submission(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def check_submission(path: Path, shapes: dict[str, tuple[int, int]]) -> None:
    """4 rows per image of ``shapes``, each image once, valid RLE for its size, consistent with masks/<stem>.png."""
    sub = read_submission(path)
    assert list(sub.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert len(sub) == 4 * len(shapes)
    assert sub.groupby("ImageId")["ClassId"].apply(sorted).to_dict() == {n: ["1", "2", "3", "4"] for n in shapes}
    for name, group in sub.groupby("ImageId"):
        decoded = np.stack([rle_decode(r, shapes[name]) for r in group.sort_values("ClassId")["EncodedPixels"]])
        exported = cv2.imread(str(path.parent / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert exported.shape == shapes[name] and exported.dtype == np.uint8 and exported.max() <= 4
        assert np.array_equal(exported > 0, decoded.any(0))
        for c in CLASS_IDS:  # the exported class is always one whose mask is on
            assert decoded[c - 1][exported == c].all()


# ---------------------------------------------------------------- the real predict.py


def test_predict_writes_every_output_and_skips_bad_files(checkpoints, tmp_path):
    good = {
        "strip_a.jpg": noise_image(*STRIP, seed=1),
        "strip_b.jpg": noise_image(*STRIP, seed=2),
        "narrow.jpg": noise_image(256, 800, seed=3),  # wrong size
        "grey.png": noise_image(200, 300, channels=1, seed=4)[..., 0],  # smaller than a tile
        "rgba.png": noise_image(256, 256, channels=4, seed=5),
    }
    images = write_images(tmp_path / "images", good)
    strip_jpeg = (images / "strip_a.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(strip_jpeg[: len(strip_jpeg) // 2])
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"

    summary = run_predict(checkpoints[:1], images, out, "--overlays", "--save-probs", "--predict.num_workers=1")

    shapes = {name: image.shape[:2] for name, image in good.items()}
    check_submission(out / "submission.csv", shapes)
    assert set(summary.skipped) == {"corrupt.jpg", "empty.jpg"}
    assert summary.n_images == 7 and summary.n_written == summary.n_predicted == 5
    assert sorted(line.split("\t")[0] for line in (out / "skipped.txt").read_text().splitlines()) == [
        "corrupt.jpg", "empty.jpg"]
    for name, shape in shapes.items():
        stem = Path(name).stem
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.jpg"))
        assert overlay.shape[1] == shape[1] and overlay.shape[0] > shape[0]  # the strip under a legend
        probs, class_probs = load_probs(out / "probs" / f"{stem}.npz")
        assert probs.shape == (4, *shape) and 0 <= probs.min() <= probs.max() <= 1 and class_probs is None

    again = run_predict(checkpoints[:1], images, out, "--resume", "--format", COMPETITION)
    assert again.n_predicted == 0 and again.n_written == 5
    sub = read_submission(out / "submission.csv")
    assert list(sub.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert sorted(sub["ImageId_ClassId"]) == sorted(f"{n}_{c}" for n in good for c in CLASS_IDS)


def test_strict_exits_non_zero_in_a_subprocess(checkpoints, tmp_path):
    images = write_images(tmp_path / "images", {"ok.jpg": noise_image(256, 288)})
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "predict.py"), "--checkpoint", str(checkpoints[0]), "--images", str(images),
           "--out", str(out), "--strict", "--device", "cpu", "--full-frame", "--predict.num_workers=0",
           "--predict.amp=auto", "--predict.channels_last=true"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0, run.stderr
    assert "--strict" in run.stderr and "empty.jpg" in run.stdout
    check_submission(out / "submission.csv", {"ok.jpg": (256, 288)})


def test_resume_predicts_only_unfinished_images(checkpoints, tmp_path, monkeypatch):
    names = [f"img{i}.jpg" for i in range(5)]
    images = write_images(tmp_path / "images", {n: noise_image(64, 64, seed=i) for i, n in enumerate(names)})
    tiles = ["--predict.tile=64", "--predict.stride=64", "--predict.batch_size=2"]
    out = tmp_path / "out"
    real_write = predictor_module.ResultWriter.write
    written = []

    def write_then_die(self, name, *args):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill after two images")
        real_write(self, name, *args)
        written.append(name)

    monkeypatch.setattr(predictor_module.ResultWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoints[:1], images, out, *tiles)
    assert sorted(read_journals(out / ".journal")) == written == names[:2]

    monkeypatch.setattr(predictor_module.ResultWriter, "write", real_write)
    real_predict = Predictor.predict_probs
    predicted = []

    def counting(self, batch):
        predicted.append(batch.shape[0])
        return real_predict(self, batch)

    monkeypatch.setattr(Predictor, "predict_probs", counting)
    summary = run_predict(checkpoints[:1], images, out, *tiles, "--resume")
    assert sum(predicted) == summary.n_predicted == 3 and summary.n_written == 5
    check_submission(out / "submission.csv", {n: (64, 64) for n in names})


def test_two_checkpoints_average_as_probabilities(checkpoints, tmp_path):
    images = write_images(tmp_path / "images", {"x.png": noise_image(200, 240)})
    probs = {}
    for key, ckpts in {"a": checkpoints[:1], "b": checkpoints[1:], "ab": checkpoints}.items():
        run_predict(ckpts, images, tmp_path / key, "--save-probs")
        probs[key] = load_probs(tmp_path / key / "probs" / "x.npz")[0]
    assert np.abs(probs["a"] - probs["b"]).max() > 0.01
    np.testing.assert_allclose(probs["ab"], (probs["a"] + probs["b"]) / 2, atol=2e-3)  # stored as float16


def test_postprocess_file_replaces_the_thresholds(checkpoints, tmp_path):
    images = write_images(tmp_path / "images", {"x.jpg": noise_image(64, 64)})
    PostProcess(threshold=[1.0] * 4).to_json(tmp_path / "tuned.json")  # nothing is above 1
    run_predict(checkpoints[:1], images, tmp_path / "out", f"--postprocess.file={tmp_path / 'tuned.json'}")
    assert (read_submission(tmp_path / "out" / "submission.csv")["EncodedPixels"] == "").all()
    assert not cv2.imread(str(tmp_path / "out" / "masks" / "x.png"), cv2.IMREAD_UNCHANGED).any()


def test_overrides_other_than_predict_and_postprocess_are_refused(checkpoints, tmp_path):
    with pytest.raises(SystemExit):
        predict.parse_args(["--checkpoint", "a.pt", "--images", "i", "--out", "o", "--model.smp.arch=FPN"])
    images = write_images(tmp_path / "images", {"x.jpg": noise_image(64, 64)})
    with pytest.raises(SystemExit, match="predict.tilee"):
        run_predict(checkpoints[:1], images, tmp_path / "out", "--predict.tilee=3")


# ---------------------------------------------------------------- exact round trip


class PaintedClasses(nn.Module):
    """A 'model' that reads the class painted into an image: red value 40 * c
    is class c (0 none). Per-pixel, so every tiling reproduces it exactly."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = torch.round(images[:, 0] * 255 / PAINT_STEP)
        return torch.stack([(level == c).float() for c in CLASS_IDS], 1)


def truth_class_maps() -> dict[str, np.ndarray]:
    """uint8 [256, 1600] class maps with shapes no transposition survives; one image defect-free."""
    a, b = np.zeros(STRIP, np.uint8), np.zeros(STRIP, np.uint8)
    a[10:50, 100:400] = 1
    cv2.line(a, (500, 0), (900, 255), 3, thickness=9)
    cv2.circle(b, (1500, 200), 40, 2, thickness=-1)
    cv2.fillPoly(b, [np.array([[20, 250], [300, 5], [310, 30]])], 4)
    b[0, 1599] = 3  # the last pixel of the strip
    return {"a.png": a, "b.png": b, "c.png": np.zeros(STRIP, np.uint8)}


def load_evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("overrides", [{}, {"full_frame": True, "tta": "hvflip"}, {"tile": 128, "stride": 100}])
def test_truth_masks_round_trip_to_a_perfect_score(tmp_path, capsys, overrides):
    truth = truth_class_maps()
    images = write_images(tmp_path / "images", {n: m * PAINT_STEP for n, m in truth.items()})
    rles = {n: {c: rle_encode(m == c) for c in CLASS_IDS if (m == c).any()} for n, m in truth.items()}
    write_mask_csv(tmp_path / "truth.csv", rles, RERELEASED)
    predictor = Predictor([PaintedClasses()], PredictConfig(num_workers=0, **overrides))
    summary = predict_folder(predictor, PostProcess(), images, tmp_path / "out", init_distributed("cpu"))

    assert summary.n_written == 3 and not summary.skipped
    for name, expected in truth.items():
        exported = cv2.imread(str(tmp_path / "out" / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(exported, expected)
    load_evaluate_script().main(["--pred", str(summary.submission), "--truth", str(tmp_path / "truth.csv"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == 1.0 and result["n_images"] == 3
    assert result["per_class"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}


# ---------------------------------------------------------------- pieces


class Constant(nn.Module):
    """Probability ``value`` everywhere."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0], 4, *images.shape[-2:]), self.value)


class ConstantWithHead(Constant):
    def __init__(self, value: float, class_probs):
        super().__init__(value)
        self.fixed = torch.tensor(class_probs)

    def class_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(images.shape[0], 4)


def test_predictor_averages_probs_and_class_probs_of_models_with_a_head():
    models = [ConstantWithHead(0.2, [1.0, 0.0, 0.5, 0.0]), ConstantWithHead(0.6, [0.0, 0.0, 0.5, 1.0]), Constant(0.4)]
    probs, class_probs = Predictor(models, PredictConfig()).predict_probs(torch.rand(2, 3, 64, 300))
    assert probs.shape == (2, 4, 64, 300) and torch.allclose(probs, torch.tensor(0.4))
    assert torch.allclose(class_probs, torch.tensor([[0.5, 0.0, 0.5, 0.5]] * 2))
    assert Predictor([Constant(0.4)], PredictConfig()).predict_probs(torch.rand(1, 3, 64, 64))[1] is None


def test_smp_model_without_head_has_no_class_probs_and_gate_needs_one(tmp_path):
    unet = build_model(load_config(None, ["--model.smp.encoder=resnet18"]))
    assert not has_class_head(unet)
    images = write_images(tmp_path / "images", {"x.jpg": noise_image(64, 64)})
    with pytest.raises(ConfigError, match="classification head"):
        predict_folder(Predictor([Constant(0.4)], PredictConfig()), PostProcess(gate=[0.5, 0, 0, 0]), images,
                       tmp_path / "out", init_distributed("cpu"))


def test_same_size_groups_batch_consecutive_images_of_one_size():
    sizes = [(8, 8), (8, 8), (8, 8), (8, 16), (8, 8)]
    items = [(f"{i}", torch.zeros(3, *s)) for i, s in enumerate(sizes)]
    groups = list(same_size_groups(items, lambda h, w: 2))
    assert [names for names, _ in groups] == [["0", "1"], ["2"], ["3"], ["4"]]
    assert groups[0][1].shape == (2, 3, 8, 8)


def test_probs_files_shard_over_ranks_and_resume_from_the_files(tmp_path):
    names = [f"img{i}.jpg" for i in range(5)]
    images = write_images(tmp_path / "images", {n: noise_image(64, 64, seed=i) for i, n in enumerate(names)})
    predictor = Predictor([Constant(0.25)], PredictConfig(num_workers=0, tile=64, stride=64))
    out, single = tmp_path / "out", init_distributed("cpu")
    rank1 = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert predict_probs_files(predictor, images, names, out, rank1) == 2  # no process group: this rank's count
    assert sorted(p.name for p in out.iterdir()) == ["img1.npz", "img3.npz"]
    np.testing.assert_allclose(load_probs(out / "img3.npz")[0], 0.25)
    todo = missing_probs(out, names, single)
    assert todo == ["img0.jpg", "img2.jpg", "img4.jpg"]
    assert predict_probs_files(predictor, images, todo, out, single) == 3 and missing_probs(out, names, single) == []


def test_probs_files_stop_at_an_unreadable_image_or_shared_stems(tmp_path):
    images = write_images(tmp_path / "images", {"a.jpg": noise_image(64, 64), "a.png": noise_image(64, 64)})
    (images / "bad.jpg").write_bytes(b"")
    predictor, single = Predictor([Constant(0.25)], PredictConfig(num_workers=0)), init_distributed("cpu")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        predict_probs_files(predictor, images, ["a.jpg", "bad.jpg"], tmp_path / "out", single)
    with pytest.raises(ValueError, match=r"share the file stems \['a'\]"):
        predict_probs_files(predictor, images, ["a.jpg", "a.png"], tmp_path / "out", single)


def test_images_per_call_fills_a_tile_batch():
    predictor = Predictor([Constant(0.5)], PredictConfig(batch_size=16))
    assert predictor.images_per_call(256, 1600) == 3  # 7 tiles each
    assert predictor.images_per_call(100, 100) == 16  # padded to one tile
    assert predictor.images_per_call(2048, 2048) == 1


def test_class_map_higher_probability_wins_where_masks_overlap():
    masks = np.zeros((4, 1, 3), np.uint8)
    masks[0, 0, :2] = 1
    masks[2, 0, 1:] = 1
    probs = np.full((4, 1, 3), 0.1, np.float32)
    probs[2, 0, 1] = 0.9  # the overlap at column 1 goes to class 3
    assert class_map(masks, probs).tolist() == [[1, 3, 3]]


def test_journal_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "rank0.jsonl"
    path.write_text('{"image": "a.jpg", "error": "x"}\n{"image": "b.jp')
    with Journal(path) as journal:
        journal.append({"image": "c.jpg", "rles": ["", "", "", ""], "shape": [1, 1]})
        journal.append({"image": "a.jpg", "rles": ["1 1", "", "", ""], "shape": [1, 1]})
    records = read_journals(tmp_path)
    assert sorted(records) == ["a.jpg", "c.jpg"] and records["a.jpg"]["rles"][0] == "1 1"


def test_maskrcnn_checkpoint_writes_a_valid_submission(tmp_path):
    """predict.py takes a Mask R-CNN checkpoint unchanged, tiled and full-frame."""
    checkpoint = save_tiny_checkpoint(tmp_path / "mrcnn.pt", 0, "--model.name=maskrcnn", "--model.maskrcnn.backbone=resnet18",
                                      "--model.maskrcnn.score_threshold=0.0", "--model.maskrcnn.detections_per_image=3")
    images = write_images(tmp_path / "images", {"a.jpg": noise_image(256, 480)})
    for mode in ([], ["--full-frame"]):
        out = tmp_path / f"out{len(mode)}"
        summary = run_predict([checkpoint], images, out, *mode)
        assert summary.n_written == 1
        check_submission(out / "submission.csv", {"a.jpg": (256, 480)})


def test_gradcam_pictures_for_a_two_head_model(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "heads.pt", 0, "--model.smp.classification_head=true", "--loss.cls=0.2")
    images = write_images(tmp_path / "images", {"a.jpg": noise_image(256, 512)})
    run_predict([checkpoint], images, tmp_path / "out", "--gradcam")
    panel = cv2.imread(str(tmp_path / "out" / "gradcam" / "a.jpg"))
    assert panel.shape == (4 * 256, 512, 3)
    with pytest.raises(SystemExit, match="classification head"):
        run_predict([save_tiny_checkpoint(tmp_path / "plain.pt", 0)], images, tmp_path / "out2", "--gradcam")
