"""serve.py: the micro-batcher alone, then the real server in its own
process on a free loopback port, against predict.py's answers."""

import asyncio
import base64
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest
from test_predict import save_tiny_checkpoint

import predict
from serving.batcher import MicroBatcher, QueueFull

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-3f9a"


# ---------------------------------------------------------------- the batcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_each_gets_its_own_result():
    sizes = []

    async def main():
        batcher = MicroBatcher(lambda items: [x * 10 for x in items], max_batch=4, max_wait_ms=50,
                               on_batch=sizes.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i, timeout=5) for i in range(10)))
        await batcher.stop()
        return results

    assert run(main()) == [i * 10 for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) < 10  # batched, never above max_batch


def test_a_full_queue_is_refused_at_once_and_nothing_is_lost():
    release = asyncio.Event()

    async def main():
        def slow(items):
            while not release.is_set():
                time.sleep(0.01)
            return items

        batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        running = asyncio.create_task(batcher.submit("a", timeout=5))  # taken by the worker
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(x, timeout=5)) for x in "bc"]  # fill the queue
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="2 requests already waiting"):
            await batcher.submit("d", timeout=5)
        release.set()
        results = await asyncio.gather(running, *waiting)
        await batcher.stop()
        return results

    assert run(main()) == ["a", "b", "c"]


def test_a_request_that_times_out_is_dropped_and_errors_reach_every_request_of_the_batch():
    seen = []

    async def main():
        def work(items):
            seen.extend(items)
            time.sleep(0.2)
            if "boom" in items:
                raise RuntimeError("model failed")
            return items

        batcher = MicroBatcher(work, max_batch=2, max_wait_ms=0, max_queue=4)
        await batcher.start()
        first = asyncio.create_task(batcher.submit("first", timeout=5))
        await asyncio.sleep(0.02)
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit("late", timeout=0.05)  # gives up while "first" runs
        assert await first == ["first"][0]
        errors = await asyncio.gather(batcher.submit("boom", timeout=5), batcher.submit("x", timeout=5),
                                      return_exceptions=True)
        await batcher.stop()
        return errors

    errors = run(main())
    assert "late" not in seen  # never run: its request had gone
    assert all(isinstance(e, RuntimeError) and "model failed" in str(e) for e in errors)


# ---------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip(seed: int, height: int = 256, width: int = 512) -> bytes:
    rng = np.random.default_rng(seed)
    image = (rng.random((height, width)) * 60 + 90).astype(np.uint8)
    image[40:120, 100 + 20 * seed : 200 + 20 * seed] = 20  # a dark patch that moves with the seed
    ok, data = cv2.imencode(".jpg", cv2.merge([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return data.tobytes()


def start_server(args: list[str], keys: str, **env) -> tuple[subprocess.Popen, str]:
    """serve.py with ``args`` on a free loopback port, once /readyz answers:
    (the process, its base URL). A server that exits or is not ready within
    120 s is a RuntimeError with its output."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(REPO / "serve.py"), *args, "--port", str(port)],
                               env={**os.environ, "SEVERSTAL_API_KEYS": keys, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("serve.py not ready within 120 s")


def stop_server(process: subprocess.Popen) -> str:
    """Terminate (then kill) ``process``; its whole output."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """serve.py on a free loopback port, one torch thread, a tiny checkpoint."""
    folder = tmp_path_factory.mktemp("serve")
    checkpoint = save_tiny_checkpoint(folder / "tiny.pt", 0, "--predict.amp=off", "--predict.num_workers=0")
    process, base = start_server(["--checkpoint", str(checkpoint), "--device", "cpu", "--max-bytes", "2000000",
                                  "--max-batch", "8", "--max-wait-ms", "20"], f"other-key,{KEY}", OMP_NUM_THREADS="1")
    yield base, checkpoint
    output = stop_server(process)
    assert KEY not in output and "other-key" not in output  # keys are never logged


def inspect(base, data: bytes, key=KEY, kind="image/jpeg", **params) -> httpx.Response:
    headers = {"Content-Type": kind} | ({"X-API-Key": key} if key is not None else {})
    return httpx.post(f"{base}/v1/inspect", content=data, headers=headers, params=params, timeout=60)


def test_keys_are_required_and_compared_exactly(server):
    base, _ = server
    assert inspect(base, strip(0), key=None).status_code == 401
    wrong = inspect(base, strip(0), key=KEY + "x")
    assert wrong.status_code == 401 and wrong.json() == {"detail": "unauthorized"}
    assert httpx.get(f"{base}/metrics").status_code == 401 and httpx.get(f"{base}/v1/model").status_code == 401
    assert httpx.get(f"{base}/healthz").status_code == 200  # probes need no key


def test_answer_equals_predict_py_for_the_same_image(server, tmp_path, one_thread):
    base, checkpoint = server
    answer = inspect(base, strip(1), overlay="true").json()
    assert answer["height"] == 256 and answer["width"] == 512 and answer["verdict"] in ("pass", "fail")
    assert len(answer["model"]["sha256"]) == 64 and cv2.imdecode(
        np.frombuffer(base64.b64decode(answer["overlay_png"]), np.uint8), cv2.IMREAD_COLOR) is not None
    images = tmp_path / "images"
    images.mkdir()
    (images / "s.jpg").write_bytes(strip(1))
    predict.main(["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(tmp_path / "out"),
                  "--device", "cpu"])
    truth = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    expected = dict(zip(truth["ClassId"], truth["EncodedPixels"]))
    assert {c["class_id"]: c["rle"] for c in answer["classes"]} == expected
    assert answer["verdict"] == ("fail" if any(expected.values()) else "pass")
    assert [c["present"] for c in answer["classes"]] == [bool(expected[k]) for k in (1, 2, 3, 4)]


def test_multipart_upload_names_the_image(server):
    base, _ = server
    response = httpx.post(f"{base}/v1/inspect", files={"image": ("coil7_strip3.jpg", strip(2), "image/jpeg")},
                          headers={"X-API-Key": KEY}, timeout=60)
    assert response.status_code == 200 and response.json()["image"] == "coil7_strip3.jpg"


def test_bad_input_is_refused_with_its_reason_and_the_server_keeps_serving(server):
    base, _ = server
    too_big = inspect(base, b"\xff\xd8" + b"0" * 2_100_000)
    assert too_big.status_code == 413 and "over the limit of 2000000" in too_big.json()["detail"]
    garbage = inspect(base, b"this is not an image at all")
    assert garbage.status_code == 415 and "not a JPEG or PNG" in garbage.json()["detail"]
    truncated = inspect(base, strip(3)[:5000])
    assert truncated.status_code == 422 and "truncated JPEG" in truncated.json()["detail"]
    assert inspect(base, strip(3), kind="text/plain").status_code == 415
    assert inspect(base, strip(3)).status_code == 200  # still serving


def test_32_concurrent_requests_each_get_their_own_images_answer(server):
    """Batched together, none is mixed up with another: each answer names its
    image and matches that image's answer alone (areas within a few pixels:
    another batch shape may round a handful of pixels differently)."""
    base, _ = server
    names = [f"s{i}.jpg" for i in range(8)]
    alone = {}
    for i, name in enumerate(names):
        alone[name] = httpx.post(f"{base}/v1/inspect", files={"image": (name, strip(10 + i), "image/jpeg")},
                                 headers={"X-API-Key": KEY}, timeout=60).json()

    def call(k):
        name = names[k % 8]
        return httpx.post(f"{base}/v1/inspect", files={"image": (name, strip(10 + k % 8), "image/jpeg")},
                          headers={"X-API-Key": KEY}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(call, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    for response in responses:
        answer = response.json()
        single = alone[answer["image"]]
        for got, want in zip(answer["classes"], single["classes"]):
            assert abs(got["area"] - want["area"]) <= 20 and abs(got["probability"] - want["probability"]) < 1e-3
    metrics = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}).text
    assert 'inspect_requests_total{path="/v1/inspect",status="200"}' in metrics
    batches = [line for line in metrics.splitlines() if line.startswith("inspect_batch_size_count")]
    served = float(batches[0].split()[-1])
    sums = [line for line in metrics.splitlines() if line.startswith("inspect_batch_size_sum")]
    assert float(sums[0].split()[-1]) >= 40 and served < float(sums[0].split()[-1])  # some batches held several


def test_model_description(server):
    base, checkpoint = server
    model = httpx.get(f"{base}/v1/model", headers={"X-API-Key": KEY}).json()
    assert model["checkpoints"] == [str(checkpoint)] and model["precision"]["amp"] == "off"
    assert model["device"] == "cpu" and model["postprocess_origin"] == "the config's defaults"
    assert model["limits"]["max_bytes"] == 2_000_000


def test_refuses_to_start_without_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SEVERSTAL_API_KEYS"}
    run = subprocess.run([sys.executable, str(REPO / "serve.py"), "--checkpoint", str(tmp_path / "x.pt")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "no API keys" in run.stderr and "--no-auth" in run.stderr


# ---------------------------------------------------------------- overload, in process


class SlowInspector:
    """Answers after ``seconds``: enough to fill the queue or outlive a timeout."""

    checkpoints, sha256 = (), ""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def warm_up(self):
        pass

    def inspect_batch(self, requests):
        time.sleep(self.seconds)
        return [{"verdict": "pass", "classes": []} for _ in requests]


def test_overload_gets_503_with_retry_after_and_a_slow_answer_504():
    from fastapi.testclient import TestClient

    from serving.app import Limits, create_app

    jpeg = strip(0)
    headers = {"X-API-Key": KEY, "Content-Type": "image/jpeg"}
    limits = Limits(max_batch=1, max_wait_ms=0, max_queue=1, timeout_s=0.3)
    with TestClient(create_app(SlowInspector(1.0), frozenset({KEY}), limits)) as client:
        assert client.post("/v1/inspect", content=jpeg, headers=headers).status_code == 504
    limits = Limits(max_batch=1, max_wait_ms=0, max_queue=1, timeout_s=10)
    with TestClient(create_app(SlowInspector(0.5), frozenset({KEY}), limits)) as client:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/inspect", content=jpeg, headers=headers), range(4)))
        codes = sorted(r.status_code for r in responses)
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "busy" in busy.json()["detail"]
        assert client.get("/healthz").status_code == 200  # and it keeps serving
