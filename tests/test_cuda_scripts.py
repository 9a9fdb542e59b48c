"""The user-facing scripts on a CUDA device, end to end: train.py then
predict.py, serve.py, and two ranks over NCCL. tests/test_cuda.py checks the
pieces (GradScaler, channels_last, the predictor); these check that the
scripts wire them up. Skipped without CUDA (tests/conftest.py); the NCCL test
also needs two GPUs."""

import base64
import json
import math
import os
import subprocess
import sys

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from test_multinode import RECORDING_TRAIN, free_port
from test_serve import start_server, stop_server
from test_train import REPO, tiny_args

import predict
import train
from core.precision import cuda_bf16_support
from datasets.rle import rle_decode

pytestmark = pytest.mark.cuda

KEY = "cuda-test-key-51c2"


def masks_of(submission) -> dict:
    """{(ImageId, ClassId): mask} of a submission csv (1600x256 strips)."""
    table = pd.read_csv(submission, keep_default_na=False)
    return {(row.ImageId, row.ClassId): rle_decode(row.EncodedPixels) for row in table.itertuples()}


@pytest.fixture(scope="module")
def cuda_run(tiny_data, tmp_path_factory):
    """train.py on the GPU with the demo config's ``train.amp=auto``: two short epochs."""
    out = tmp_path_factory.mktemp("cuda_run") / "run"
    record = train.main(tiny_args(tiny_data, out, "--train.device=cuda", "--train.channels_last=true"))
    return out, record


def test_train_py_on_cuda_uses_bf16_and_writes_a_checkpoint_that_loads_anywhere(cuda_run):
    out, record = cuda_run
    expected = "bf16" if cuda_bf16_support(torch.device("cuda"))[0] else "fp16"  # auto: bf16 from Ampere on, else fp16
    checkpoint = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    assert checkpoint["precision"]["amp"] == expected and checkpoint["config"]["train"]["device"] == "cuda"
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 4
    assert all(t.device.type == "cpu" for t in checkpoint["model"].values())  # saved device-free
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val" in line for line in lines) and math.isfinite(record["best_score"])


def test_predict_py_on_cuda_agrees_with_the_cpu(cuda_run, tiny_data, tmp_path):
    """The trained checkpoint, float32 on both devices: the masks differ only
    where a probability sits on its threshold (TF32 and kernel order)."""
    out, _ = cuda_run
    common = ["--checkpoint", str(out / "best.pt"), "--images", str(tiny_data / "test_images"),
              "--predict.amp=off", "--predict.num_workers=0"]
    for device in ("cpu", "cuda"):
        predict.main([*common, "--device", device, "--out", str(tmp_path / device)])
    cpu, gpu = (masks_of(tmp_path / d / "submission.csv") for d in ("cpu", "cuda"))
    assert cpu.keys() == gpu.keys() and len(cpu) == 6 * 4
    agreement = np.mean([(cpu[k] == gpu[k]).mean() for k in cpu])
    assert agreement > 0.999, agreement


def test_serve_py_on_cuda_answers_like_predict_py(cuda_run, tiny_data, tmp_path):
    out, _ = cuda_run
    checkpoint = out / "best.pt"
    image = sorted((tiny_data / "test_images").iterdir())[0]
    process, base = start_server(["--checkpoint", str(checkpoint), "--device", "cuda", "--max-batch", "4",
                                  "--max-wait-ms", "10"], KEY)
    try:
        answers = [httpx.post(f"{base}/v1/inspect", content=image.read_bytes(), timeout=60,
                              headers={"Content-Type": "image/jpeg", "X-API-Key": KEY}, params={"overlay": "true"})
                   for _ in range(3)]
        described = httpx.get(f"{base}/v1/model", headers={"X-API-Key": KEY}, timeout=10).json()
    finally:
        log = stop_server(process)
    assert KEY not in log
    assert [a.status_code for a in answers] == [200] * 3
    first = answers[0].json()
    assert all(a.json()["classes"] == first["classes"] for a in answers[1:])  # the same answer each time
    assert described["device"].startswith("cuda")
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(first["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape[1] == 1600 and overlay.shape[0] >= 256  # the strip, then a legend
    predict.main(["--checkpoint", str(checkpoint), "--images", str(image.parent), "--out", str(tmp_path / "p"),
                  "--device", "cuda", "--predict.num_workers=0"])
    expected = masks_of(tmp_path / "p" / "submission.csv")
    for entry in first["classes"]:
        ours = rle_decode(entry["rle"])
        assert (ours == expected[(image.name, entry["class_id"])]).mean() > 0.999, entry["class_id"]


def test_two_ranks_over_nccl_train_one_model(tiny_data, tmp_path):
    """torchrun --nproc_per_node=2 on two GPUs: the NCCL process group, DDP,
    one checkpoint. NCCL refuses two ranks on one GPU, hence the skip."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs for NCCL, this machine has {torch.cuda.device_count()}")
    script, reports, out = tmp_path / "recording_train.py", tmp_path / "reports", tmp_path / "run"
    script.write_text(RECORDING_TRAIN)
    reports.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script), str(reports),
                           *tiny_args(tiny_data, out, "--train.epochs=1", "--train.device=cuda")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"], "the ranks ended with different weights"
    assert ranks[1]["saved"] == [] and sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
