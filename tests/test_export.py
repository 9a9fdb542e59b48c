"""scripts/export.py, the ONNX predictor behind predict.py and serve.py,
scripts/quantize.py and distillation.

One export of two averaged random tiny U-Nets with a classification head
serves most tests (module fixture): its parity and metadata, predict.py's
submission through ONNX Runtime against PyTorch's, serve.py's inspector.
torch.export takes about a minute on two busy cores, so those tests are
marked slow.
"""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

import predict
import serve
from core.checkpoint import save_checkpoint
from core.config import ConfigError, load_config, to_dict
from core.precision import resolve_amp
from datasets.io import read_image, to_tensor
from datasets.rle import rle_decode
from inference.onnx_export import (
    AveragedModel,
    ExportRefused,
    check_parity,
    export_checkpoints,
    read_metadata,
    sha256_of,
)
from inference.onnx_predictor import OnnxPredictor, onnx_providers
from inference.postprocess import load_probs
from models import build_model, load_model
from training.distill import Teacher

REPO = Path(__file__).resolve().parents[1]
TUNED = {"threshold": [0.5, 0.45, 0.55, 0.5], "min_component_area": [0, 10, 0, 0], "min_total_area": [0, 0, 20, 0],
         "gate": [0.0, 0.0, 0.0, 0.3], "multiply_class_probs": False, "file": "",
         "source": "tuned on the validation fold (test)"}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_checkpoint(path: Path, seed: int, *overrides: str) -> Path:
    """A random U-Net (the first three resnet18 stages, a narrow decoder) with a classification head and
    'tuned' post-processing, as the trainer saves it."""
    torch.manual_seed(seed)
    cfg = load_config(None, ["--model.smp.encoder=resnet18", "--model.smp.classification_head=true", "--loss.cls=0.2",
                             "--model.smp.arch_kwargs={encoder_depth: 3, decoder_channels: [32, 16, 8]}",
                             "--predict.amp=off", "--predict.num_workers=0", *overrides])
    model = build_model(cfg)
    config = {**to_dict(cfg), "postprocess": TUNED}
    save_checkpoint({"model": model.state_dict(), "ema": None, "config": config, "epoch": 1, "step": 1,
                     "best_score": 0.0}, path)
    return path


def noise_strip(path: Path, height: int, width: int, seed: int) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    image = (rng.random((height, width)) * 80 + 80).astype(np.uint8)
    image[60:140, 100 + 40 * seed : 260 + 40 * seed] = 15  # a dark patch for the net to react to
    assert cv2.imwrite(str(path), cv2.merge([image] * 3))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return [tiny_checkpoint(folder / "a.pt", 0), tiny_checkpoint(folder / "b.pt", 1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("export")
    images = folder / "images"
    images.mkdir()
    for seed, (h, w) in enumerate([(256, 512), (256, 1600), (256, 480)]):
        noise_strip(images / f"s{seed}.jpg", h, w, seed)
    out = folder / "onnx" / "model.onnx"
    result = export_checkpoints(checkpoints, out, sample=images / "s0.jpg")
    return SimpleNamespace(folder=folder, images=images, checkpoints=checkpoints, path=out, result=result)


@pytest.mark.slow
def test_export_is_one_file_with_everything_in_its_metadata(exported):
    assert [p.name for p in exported.path.parent.iterdir()] == ["model.onnx"]  # no external data file
    meta = read_metadata(exported.path)
    assert meta["class_ids"] == [1, 2, 3, 4] and meta["format"] == 1
    assert meta["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["predict"]["tile"] == 256 and meta["predict"]["stride"] == 224 and meta["predict"]["blend"] == "gaussian"
    assert meta["postprocess"]["threshold"] == TUNED["threshold"] and meta["postprocess"]["gate"] == TUNED["gate"]
    assert meta["config"]["model"]["smp"]["encoder"] == "resnet18"
    assert [s["sha256"] for s in meta["sources"]] == [sha256_of(c) for c in exported.checkpoints]
    assert set(meta["parity"]) == set(exported.result.parity) and max(meta["parity"].values()) <= 1e-3


@pytest.mark.slow
def test_the_graph_averages_the_checkpoints_at_any_batch_size(exported):
    """Batch 3 (the export saw 2 and 1), a size the export never saw; two inputs: tiles and whole images."""
    models = [load_model(c)[0] for c in exported.checkpoints]
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    tiles, strips = torch.rand(3, 3, 256, 320), torch.rand(2, 3, 256, 640)
    probs, class_probs = session.run(None, {"images": tiles.numpy(), "class_images": strips.numpy()})
    with torch.inference_mode():
        want = sum(m(tiles) for m in models) / 2
        want_class = sum(m.class_probs(strips) for m in models) / 2
    assert probs.shape == (3, 4, 256, 320) and class_probs.shape == (2, 4)
    assert np.abs(probs - want.numpy()).max() < 1e-3 and np.abs(class_probs - want_class.numpy()).max() < 1e-3
    with torch.inference_mode():  # and the mean differs from either model alone
        assert np.abs(probs - models[0](tiles).numpy()).max() > 1e-3


@pytest.mark.slow
def test_parity_refuses_a_graph_that_differs_from_eager(exported):
    """The first checkpoint alone against the file (the mean of two): refused, naming the worst output."""
    model = load_model(exported.checkpoints[0])[0]
    strip = torch.rand(1, 3, 256, 512)
    with pytest.raises(ExportRefused, match=r"parity failed: max \|ONNX Runtime - eager\| = .* on (class_)?probs on 1x3x256x512"):
        check_parity(AveragedModel([model], [model]), exported.path.read_bytes(), {"strip": (strip, strip)})


@pytest.mark.slow
def test_a_refused_export_writes_nothing(exported, tmp_path, monkeypatch):
    from inference import onnx_export

    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", 0.0)  # float rounding alone now fails it
    out = tmp_path / "refused.onnx"
    with pytest.raises(ExportRefused, match="parity failed"):
        export_checkpoints(exported.checkpoints[:1], out, sample=exported.images / "s1.jpg")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def run_predict(checkpoint, images, out, *extra):
    return predict.main(["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                         "--device", "cpu", "--save-probs", *extra])


def differing_pixels_are_at_the_threshold(eager_out: Path, onnx_out: Path, thresholds) -> int:
    """Compare the two submissions mask by mask; every pixel that differs must
    have a probability within 1e-3 of its class threshold. Returns how many differ."""
    eager = pd.read_csv(eager_out / "submission.csv", keep_default_na=False)
    onnx = pd.read_csv(onnx_out / "submission.csv", keep_default_na=False)
    assert list(eager["ImageId"]) == list(onnx["ImageId"]) and list(eager["ClassId"]) == list(onnx["ClassId"])
    n_differ = 0
    for (image, class_id, rle_a), rle_b in zip(eager[["ImageId", "ClassId", "EncodedPixels"]].values,
                                                onnx["EncodedPixels"]):
        if rle_a == rle_b:
            continue
        probs, _ = load_probs(eager_out / "probs" / f"{Path(image).stem}.npz")
        shape = probs.shape[1:]
        differ = rle_decode(rle_a, shape) != rle_decode(rle_b, shape)
        near = np.abs(probs[int(class_id) - 1].astype(np.float32) - thresholds[int(class_id) - 1]) <= 1e-3
        assert near[differ].all(), f"{image} class {class_id}: pixels differ away from the threshold"
        n_differ += int(differ.sum())
    return n_differ


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "hvflip"])
def test_predict_py_through_onnx_runtime_equals_pytorch(exported, tmp_path, capsys, tta):
    eager_out, onnx_out = tmp_path / "eager", tmp_path / "onnx"
    predict.main(["--checkpoint", *map(str, exported.checkpoints), "--images", str(exported.images),
                  "--out", str(eager_out), "--device", "cpu", "--save-probs", f"--predict.tta={tta}",
                  f"--postprocess.file={_tuned_file(tmp_path)}"])
    run_predict(exported.path, exported.images, onnx_out, f"--predict.tta={tta}")
    printed = capsys.readouterr().out
    # the file's own settings: those predict.py took from the first checkpoint at export
    assert f"post-processing: {exported.path}, {exported.checkpoints[0]}, {TUNED['source']}" in printed
    assert "ONNX Runtime" in printed
    a, _ = load_probs(eager_out / "probs" / "s1.npz")
    b, _ = load_probs(onnx_out / "probs" / "s1.npz")
    assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 2e-3  # float16 files
    differing_pixels_are_at_the_threshold(eager_out, onnx_out, TUNED["threshold"])


def _tuned_file(tmp_path: Path) -> Path:
    """The checkpoints' tuned settings as a file: with two checkpoints predict.py takes the first one's."""
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({k: TUNED[k] for k in ("threshold", "min_component_area", "min_total_area", "gate",
                                                      "multiply_class_probs")}))
    return path


@pytest.mark.slow
def test_onnx_overrides_and_refusals(exported, tmp_path):
    with pytest.raises(SystemExit, match="--gradcam needs the eager model"):
        run_predict(exported.path, exported.images, tmp_path / "cam", "--gradcam")
    with pytest.raises(ConfigError, match="one .onnx file at a time"):
        predict.load_predictor([exported.path, exported.path], [], "cpu")
    predictor, postprocess, origin = predict.load_predictor([exported.path], ["--postprocess.threshold=[0.7,0.7,0.7,0.7]",
                                                                             "--predict.tile=128", "--predict.stride=96"], "cpu")
    assert isinstance(predictor, OnnxPredictor) and predictor.cfg.tile == 128
    assert postprocess.threshold == [0.7] * 4 and "postprocess.threshold from the command line" in origin
    assert postprocess.min_total_area == TUNED["min_total_area"]


@pytest.mark.slow
def test_serve_answers_with_the_onnx_file(exported, tmp_path):
    """The service on the exported file answers as on the checkpoints it came
    from: the same verdicts and class probabilities, masks that differ only
    at pixels within 1e-3 of the threshold."""
    from serving.inspector import Request

    onnx_inspector = serve.build_inspector(SimpleNamespace(checkpoint=[exported.path], device="cpu"), [])
    eager_inspector = serve.build_inspector(SimpleNamespace(checkpoint=exported.checkpoints, device="cpu"),
                                            [f"--postprocess.file={_tuned_file(tmp_path)}"])
    assert isinstance(onnx_inspector.predictor, OnnxPredictor)
    names = ["s0.jpg", "s1.jpg"]
    requests = [Request(read_image(exported.images / name), name) for name in names]
    onnx_answers, eager_answers = onnx_inspector.inspect_batch(requests), eager_inspector.inspect_batch(requests)
    for name, a, b in zip(names, onnx_answers, eager_answers):
        assert a["model"]["sha256"] == sha256_of(exported.path)
        assert (a["width"], a["height"], a["verdict"]) == (b["width"], b["height"], b["verdict"])
        probs = eager_inspector.predictor.predict_probs(to_tensor(read_image(exported.images / name))[None])[0][0]
        for ca, cb in zip(a["classes"], b["classes"]):
            assert ca["class_id"] == cb["class_id"] and abs(ca["probability"] - cb["probability"]) <= 1e-3
            differ = rle_decode(ca["rle"], (a["height"], a["width"])) != rle_decode(cb["rle"], (b["height"], b["width"]))
            near = (probs[ca["class_id"] - 1] - TUNED["threshold"][ca["class_id"] - 1]).abs().numpy() <= 1e-3
            assert near[differ].all(), f"{name} class {ca['class_id']}: masks differ away from the threshold"


def test_the_cuda_provider_is_asked_for_only_where_installed():
    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="onnxruntime-gpu"):
            onnx_providers(torch.device("cuda"))


@pytest.mark.cuda
@pytest.mark.slow
def test_onnx_predictor_on_cuda_matches_cpu(exported):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    cfg = load_config(base=read_metadata(exported.path)["config"]).predict
    images = torch.rand(1, 3, 256, 512)
    cpu, _ = OnnxPredictor(exported.path, cfg, "cpu").predict_probs(images)
    gpu, _ = OnnxPredictor(exported.path, cfg, "cuda").predict_probs(images)
    assert (cpu - gpu).abs().max() < 1e-3


# ---------------------------------------------------------------- Mask R-CNN


@pytest.mark.slow
def test_maskrcnn_export_is_refused_with_the_reason(tmp_path):
    """The TorchScript-based exporter runs, but its graph fails on another
    batch size (torchvision's per-image loops are traced): refused, nothing written."""
    images = tmp_path / "images"
    images.mkdir()
    sample = noise_strip(images / "a.jpg", 256, 512, 0)
    checkpoint = tiny_checkpoint(tmp_path / "mrcnn.pt", 0, "--model.name=maskrcnn", "--model.maskrcnn.backbone=resnet18",
                                 "--model.maskrcnn.score_threshold=0.0", "--model.maskrcnn.detections_per_image=3",
                                 "--model.smp.classification_head=false", "--loss.cls=0")
    with pytest.raises(ExportRefused, match="Mask R-CNN: the TorchScript-based exporter traces"):
        export_checkpoints([checkpoint], tmp_path / "m.onnx", sample=sample)
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- distillation


def test_distillation_needs_a_teacher_and_an_smp_student():
    with pytest.raises(ConfigError, match="loss.distill"):
        load_config(None, ["--loss.distill=1.0"])
    with pytest.raises(ConfigError, match="loss.distill"):
        load_config(None, ["--model.teacher_checkpoint=[a.pt]"])
    with pytest.raises(ConfigError, match="needs model.name: smp"):
        load_config(None, ["--loss.distill=1.0", "--model.teacher_checkpoint=[a.pt]", "--model.name=maskrcnn"])


def test_the_student_learns_the_averaged_teachers_probabilities(checkpoints):
    cfg = load_config(None, ["--model.smp.encoder=resnet18", "--model.smp.arch=FPN", "--loss.distill=2.0",
                             f"--model.teacher_checkpoint=[{checkpoints[0]},{checkpoints[1]}]"])
    teacher = Teacher.from_config(cfg, "cpu", resolve_amp("off", "cpu"))
    images = torch.rand(2, 3, 64, 96)
    targets = {"masks": torch.zeros(2, 4, 64, 96), "labels": torch.zeros(2, 4)}
    labelled = teacher.label(images, targets)
    models = [load_model(c)[0] for c in checkpoints]
    with torch.no_grad():
        want = sum(m(images) for m in models) / 2
    assert torch.allclose(labelled["teacher_probs"], want, atol=1e-6)
    student = build_model(cfg).train()
    torch.manual_seed(0)  # the same dropout mask (FPN's decoder) in both forward passes
    losses = student(images, labelled)
    torch.manual_seed(0)
    logits = student.net(student._normalise(images))
    expected = 2.0 * torch.nn.functional.binary_cross_entropy_with_logits(logits, want)
    assert set(losses) == {"loss_bce", "loss_distill"}
    assert losses["loss_distill"].item() == pytest.approx(expected.item(), rel=1e-4)
    losses["loss_distill"].backward()
    assert student.net.encoder.parameters().__next__().grad is not None
    assert all(p.grad is None for m in teacher.models for p in m.parameters())
    with pytest.raises(ValueError, match="teacher_probs"):
        student(images, targets)


# ---------------------------------------------------------------- int8


@pytest.mark.slow
def test_quantize_writes_a_self_contained_int8_file_and_scores_it(exported, tiny_data, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quantize_script", REPO / "scripts" / "quantize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    truth = tmp_path / "truth.csv"
    names = sorted(p.name for p in (tiny_data / "test_images").iterdir())
    truth.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{n},1 10,3\n" for n in names))
    out = tmp_path / "model.int8.onnx"
    scores = script.main([str(exported.path), "--calibrate", str(tiny_data), "--out", str(out), "--strips", "2",
                          "--images", str(tiny_data / "test_images"), "--truth", str(truth)])
    printed = capsys.readouterr().out
    assert "held-out Kaggle score change, int8 - float32" in printed and set(scores) == {"float32", "int8"}
    meta = read_metadata(out)
    assert meta["quantized"]["weights"] == "int8 per channel" and len(meta["quantized"]["calibration"]) == 2
    assert meta["postprocess"] == read_metadata(exported.path)["postprocess"]
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    tiles = torch.rand(2, 3, 256, 256).numpy()
    probs, _ = session.run(None, {"images": tiles, "class_images": tiles})
    assert probs.shape == (2, 4, 256, 256) and 0 <= probs.min() and probs.max() <= 1


@pytest.mark.parametrize("extra, message", [
    ([], "ONNX file not found"),
    (["--images", "x"], "--images and --truth go together"),
])
def test_quantize_script_run_as_a_user_runs_it_names_bad_input(tmp_path, extra, message):
    """scripts/quantize.py as its own process (the path without the repository
    root, where onnxruntime.quantization's `models` folder once shadowed ours)."""
    import subprocess
    import sys

    model = tmp_path / "m.onnx"
    if extra:
        model.write_bytes(b"")
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts/quantize.py"),
                             str(model), "--calibrate", str(tmp_path), "--out", str(tmp_path / "q.onnx"), *extra],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "q.onnx").exists()
