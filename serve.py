"""Serve defect inspection over HTTP: each strip in, pass/fail and the defect masks out.

    SEVERSTAL_API_KEYS=key1,key2 python serve.py --checkpoint RUN/best.pt [MORE.pt ...] \\
        [--postprocess.file=tuned.json] [--predict.key=value ...] --host 127.0.0.1 --port 8000

    curl -H "X-API-Key: key1" -H "Content-Type: image/jpeg" --data-binary @strip.jpg \\
        http://127.0.0.1:8000/v1/inspect

The models, tiler and post-processing are predict.py's (the same checkpoint
defaults, the same overrides, the same masks); ``--checkpoint model.onnx``
(scripts/export.py's file) serves through ONNX Runtime instead. API keys come from
SEVERSTAL_API_KEYS (comma-separated) or --api-keys-file (one per line); the
server refuses to start without any unless --no-auth is given. Endpoints:
POST /v1/inspect (raw image/jpeg or image/png body, or multipart field
``image``; ?overlay=true adds a PNG overlay), GET /v1/model, GET /metrics
(Prometheus), GET /healthz and GET /readyz (no key needed).

One model per process: scale out with one process per GPU (--device cuda:N)
and replicas behind a load balancer (README, "Serve").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from core.cli import parse_with_overrides
from core.config import ConfigError
from core.distributed import resolve_device
from serving.app import Limits, create_app
from serving.inspector import Inspector
from workflows.cross_validation import load_predictor

KEYS_ENV = "SEVERSTAL_API_KEYS"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, nargs="+", type=Path, help="one or more checkpoints, averaged")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--api-keys-file", type=Path, help=f"one API key per line (else ${KEYS_ENV})")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (never on a shared network)")
    defaults = Limits()
    p.add_argument("--max-bytes", type=int, default=defaults.max_bytes, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="largest image (422 above)")
    p.add_argument("--max-batch", type=int, help="images per forward pass (default: 8 on a GPU, 1 on a CPU, "
                   "where batching strips measured slower: docs/BENCHMARKS.md)")
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                   help="how long a batch waits for more requests (0 with --max-batch 1: no batching)")
    p.add_argument("--max-queue", type=int, default=defaults.max_queue, help="requests that may wait (503 above)")
    p.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds before a 504")
    return parse_with_overrides(p, argv, sections=("predict", "postprocess"))


def api_keys(args) -> frozenset[str]:
    """The keys of --api-keys-file, else of $SEVERSTAL_API_KEYS; blank entries ignored."""
    if args.api_keys_file:
        text = args.api_keys_file.read_text()
        return frozenset(line.strip() for line in text.splitlines() if line.strip())
    return frozenset(key.strip() for key in os.environ.get(KEYS_ENV, "").split(",") if key.strip())


def build_inspector(args, overrides) -> Inspector:
    device = resolve_device(args.device, key="--device")
    predictor, postprocess, origin = load_predictor(args.checkpoint, overrides, device)
    print(f"predict.amp: {predictor.precision.describe()}\npost-processing: {origin}", flush=True)
    return Inspector(predictor, postprocess, [str(c) for c in args.checkpoint], origin)


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    keys = api_keys(args)
    if not keys and not args.no_auth:
        raise SystemExit(f"serve.py: no API keys: set ${KEYS_ENV}=key1,key2 or --api-keys-file, "
                         "or pass --no-auth to serve without them")
    if args.no_auth:
        print("WARNING: --no-auth: anyone who can reach this port can use the service", file=sys.stderr, flush=True)
    try:
        inspector = build_inspector(args, overrides)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"serve.py: {err}") from None
    max_batch = args.max_batch or (8 if inspector.predictor.device.type == "cuda" else 1)
    limits = Limits(args.max_bytes, args.max_pixels, max_batch, args.max_wait_ms, args.max_queue, args.timeout)
    print(f"serving on http://{args.host}:{args.port} with {'no' if args.no_auth else len(keys)} API keys, "
          f"up to {max_batch} images per forward pass", flush=True)
    uvicorn.run(create_app(inspector, frozenset() if args.no_auth else keys, limits), host=args.host,
                port=args.port, log_level="info")


if __name__ == "__main__":
    main(sys.argv[1:])
