"""The inspection service's HTTP layer (FastAPI): API keys, size limits,
bounded waiting, Prometheus metrics, and ``POST /v1/inspect`` answered by a
micro-batched ``Inspector``.

Every refusal has its status and says why, without echoing secrets: 401 (no
or wrong ``X-API-Key``, nothing more said), 413 (body over ``max_bytes``,
refused before it is read whole), 415 (not a JPEG or PNG), 422 (corrupt or
truncated image, too many pixels), 503 with ``Retry-After`` (queue full),
504 (no answer within ``timeout_s``).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from datasets.io import ImageReadError, decode_image

from .batcher import MicroBatcher, QueueFull
from .inspector import Inspector
from .inspector import Request as Inspection

IMAGE_TYPES = ("image/jpeg", "image/png")
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 16 * 1024 * 1024
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    timeout_s: float = 30.0


class Metrics:
    """The service's Prometheus series, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("inspect_requests", "Requests by endpoint and HTTP status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("inspect_latency_seconds", "Time to answer POST /v1/inspect",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("inspect_batch_size", "Images per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.verdicts = Counter("inspect_verdicts", "Answers by verdict", ["verdict"], registry=self.registry)


def create_app(inspector: Inspector, api_keys: frozenset[str], limits: Limits = Limits(),
               warm_up: bool = True) -> FastAPI:
    """The app. ``api_keys`` empty means no authentication (serve.py allows
    that only with --no-auth)."""
    metrics = Metrics()
    batcher = MicroBatcher(inspector.inspect_batch, limits.max_batch, limits.max_wait_ms, limits.max_queue,
                           on_batch=metrics.batch_size.observe)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        if warm_up:
            await batcher.call(inspector.warm_up)
        state["ready"] = True
        yield
        await batcher.stop()

    app = FastAPI(title="Steel-strip defect inspection", lifespan=lifespan)

    def authorised(request: Request) -> None:
        given = request.headers.get("x-api-key", "")
        # every key compared, each in constant time: neither which key nor how much of it matched leaks
        matched = [hmac.compare_digest(given.encode(), key.encode()) for key in api_keys]
        if api_keys and not any(matched):
            raise HTTPException(401, "unauthorized")

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    async def model():
        return {"checkpoints": [str(c) for c in inspector.checkpoints], "sha256": inspector.sha256,
                "device": str(inspector.predictor.device), "predict": vars(inspector.predictor.cfg), "precision": inspector.predictor.precision.to_dict(),
                "postprocess": vars(inspector.postprocess), "postprocess_origin": inspector.postprocess_origin,
                "limits": vars(limits)}

    @app.post("/v1/inspect", dependencies=[Depends(authorised)])
    async def inspect(request: Request, overlay: bool = False):
        started = time.perf_counter()
        data, name = await read_image_body(request, limits.max_bytes)
        image = await asyncio.to_thread(decode_checked, data, name, limits.max_pixels)
        try:
            answer = await batcher.submit(Inspection(image, name, overlay), limits.timeout_s)
        except QueueFull as error:
            raise HTTPException(503, f"busy: {error}; retry shortly", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {limits.timeout_s} s") from None
        answer["elapsed_ms"] = round(1000 * (time.perf_counter() - started), 2)
        metrics.latency.observe(time.perf_counter() - started)
        metrics.verdicts.labels(answer["verdict"]).inc()
        return answer

    return app


async def read_image_body(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The image bytes of a request and its file name (multipart) or None.
    Raw ``image/jpeg`` or ``image/png`` bodies, or the multipart field
    ``image``; 413 as soon as the body passes ``max_bytes``, 415 for
    another content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES and kind != MULTIPART:
        raise HTTPException(415, f"send the image as {' or '.join(IMAGE_TYPES)}, or as the multipart field "
                                 f"'image'; got content-type {kind or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {declared} bytes is over the limit of {max_bytes}")
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body is over the limit of {max_bytes} bytes")
        body += chunk
    if kind != MULTIPART:
        return bytes(body), None
    request._body = bytes(body)  # Starlette's form parser reads the body already read
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "multipart body has no file field 'image'")
    return await upload.read(), upload.filename


def decode_checked(data: bytes, name: str | None, max_pixels: int):
    """RGB uint8 [H, W, 3] of ``data``; the size is read from the header
    first, so an image over ``max_pixels`` is refused before it is decoded."""
    source = f"request image {name!r}" if name else "request body"
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            if header.format not in ("JPEG", "PNG"):
                raise HTTPException(415, f"{source} is {header.format}, not a JPEG or PNG image")
    except UnidentifiedImageError:
        raise HTTPException(415, f"{source} is not a JPEG or PNG image ({len(data)} bytes)") from None
    if width * height > max_pixels:
        raise HTTPException(422, f"{source} is {width}x{height} = {width * height} pixels, over the limit "
                                 f"of {max_pixels}")
    try:
        return decode_image(data, source)
    except ImageReadError as error:
        raise HTTPException(422, str(error)) from None
