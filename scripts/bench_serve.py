"""The inspection service under load, side by side with predict.py's Predictor.

    python scripts/bench_serve.py [--checkpoint RUN/best.pt] [--seconds 20] [--concurrency 1,8,32]

Starts the real serve.py in a subprocess on a free loopback port, twice
(micro-batching on: --max-batch 8 --max-wait-ms 5; off: --max-batch 1), and
drives each with N concurrent clients (httpx, asyncio) sending 1600x256 JPEG
strips for T seconds; every loop stops by itself at its deadline and after
--max-requests. Prints strips/s, p50/p99 latency, errors and lost requests
(sent but never answered) per setting. In the same run it times the
Predictor itself (predict_probs + post-processing + RLE, one strip per call,
as the service does for one client) on the same strips and model, and
prints service strips/s over Predictor strips/s: the cost of the HTTP layer.
Without --checkpoint the model is configs/demo_cpu.yaml's, randomly
initialised (the speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from core.cli import CONFIGS
from core.config import load_config
from core.precision import machine_summary
from datasets.io import decode_image
from datasets.synthetic import encode_jpeg, generate_image, image_rng
from models import save_random_checkpoint
from serve import build_inspector
from serve import parse_args as serve_args
from serving.inspector import Request

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="default: configs/demo_cpu.yaml's model, random weights")
    p.add_argument("--seconds", type=float, default=20.0, help="load per setting")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-requests", type=int, default=100_000, help="a cap on requests per setting")
    p.add_argument("--strips", type=int, default=8, help="distinct synthetic strips sent in turn")
    return p.parse_args(argv)


def demo_checkpoint(folder: Path) -> Path:
    """configs/demo_cpu.yaml's model with seeded random weights."""
    return save_random_checkpoint(load_config(CONFIGS / "demo_cpu.yaml"), folder / "demo_random.pt")


def strips(n: int) -> list[bytes]:
    """``n`` synthetic 1600x256 strips as JPEG bytes (seed 0, class 3 defects)."""
    return [encode_jpeg(generate_image(image_rng(0, 0, i), (3,))[0], 90) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py in a subprocess on a free loopback port, ready on entry, stopped on exit."""

    def __init__(self, checkpoint: Path, batch: bool):
        self.port = free_port()
        self.args = [sys.executable, str(REPO / "serve.py"), "--checkpoint", str(checkpoint), "--device", "cpu",
                     "--port", str(self.port), "--max-queue", "256", "--timeout", "120",
                     *(["--max-batch", "8", "--max-wait-ms", "5"] if batch else ["--max-batch", "1",
                                                                                  "--max-wait-ms", "0"])]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        env = {**os.environ, "SEVERSTAL_API_KEYS": KEY}
        self.process = subprocess.Popen(self.args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("serve.py was not ready within 180 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float, max_requests: int) -> dict:
    """``concurrency`` clients, each sending strips one after another until the
    deadline or until ``max_requests`` have been sent in all."""
    latencies, errors, sent = [], [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        async def client_loop(k: int) -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = bodies[(k + sent) % len(bodies)]
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/inspect", content=body,
                                                 headers={"X-API-Key": KEY, "Content-Type": "image/jpeg"})
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors.append(response.status_code)
                except httpx.HTTPError as error:
                    errors.append(type(error).__name__)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
        wall = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    return {"strips_s": len(latencies) / wall, "p50": statistics.median(ms) if ms else float("nan"),
            "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan"),
            "errors": len(errors), "lost": sent - len(latencies) - len(errors), "answered": len(latencies)}


def predictor_rate(checkpoint: Path, bodies: list[bytes], seconds: float) -> float:
    """Strips/s of the service's own inspector in this process, one strip per
    call (decode included), without HTTP."""
    args, overrides = serve_args(["--checkpoint", str(checkpoint), "--device", "cpu"])
    inspector = build_inspector(args, overrides)
    inspector.warm_up()
    done, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        inspector.inspect_batch([Request(decode_image(bodies[done % len(bodies)], "bench strip"))])
        done += 1
    return done / (time.perf_counter() - started)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.checkpoint and not args.checkpoint.is_file():
        raise SystemExit(f"bench_serve.py: checkpoint not found: {args.checkpoint}")
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = strips(args.strips)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or demo_checkpoint(Path(tmp))
        print(f"{machine_summary()}; checkpoint {args.checkpoint or 'configs/demo_cpu.yaml, random weights'}; "
              f"{len(bodies)} strips of 1600x256; {args.seconds:.0f} s per setting", flush=True)
        reference = predictor_rate(checkpoint, bodies, args.seconds)
        print(f"Predictor (no HTTP), one strip per call: {reference:.2f} strips/s", flush=True)
        print(f"{'batching':<9}{'clients':>8}{'strips/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'lost':>6}"
              f"{'vs Predictor':>14}")
        for batch in (True, False):
            with Server(checkpoint, batch) as server:
                for concurrency in levels:
                    r = asyncio.run(load(server.url, bodies, concurrency, args.seconds, args.max_requests))
                    print(f"{'on' if batch else 'off':<9}{concurrency:>8}{r['strips_s']:>10.2f}{r['p50']:>9.0f}"
                          f"{r['p99']:>9.0f}{r['errors']:>8}{r['lost']:>6}{r['strips_s'] / reference:>13.2f}x",
                          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
