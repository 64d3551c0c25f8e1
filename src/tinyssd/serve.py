"""``tinyssd serve``: a trained detector behind HTTP (FastAPI + uvicorn).

    tinyssd serve --weights runs/bananas            # http://127.0.0.1:8000/
    curl -F file=@photo.jpg http://127.0.0.1:8000/predict

``POST /predict`` takes one image, as multipart/form-data (field ``file``) or
as the whole request body, and answers the JSON of ``tinyssd predict``
(``image``, ``width``, ``height``, ``boxes`` xyxy in the image's pixels,
``scores``, ``labels``, ``names``); ``?threshold=`` overrides the server's score
threshold (its ``PostprocessConfig``) for that request.
``GET /health`` says the server is up and what it serves; ``GET /`` is a page
that draws the boxes on the chosen image. Every error is JSON ``{"error": "..."}``
with a 4xx status: 400 a request without an image, 413 an upload over the size
limit or an image over the pixel budget, 422 a file that is not a readable image.
Requests that arrive together are predicted as one batch (``BatchPredictor``:
up to ``--max-batch`` images, the first waiting at most ``--batch-wait-ms`` for
others); each answer is the one it gets alone, up to float rounding.
Needs ``pip install 'tinyssd[serve]'``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# (``request: Request``) at run time, and fastapi is imported inside create_app only.
import ipaddress
import json
import logging
import math
import queue
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .extras import require
from .options import DEFAULT_MAX_UPLOAD_MB, PostprocessConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .data.limits import DataLimits
    from .predict import Predictor

log = logging.getLogger("tinyssd")


class UploadTooLarge(Exception):
    """A request body past the upload limit (answered with 413)."""


class UploadLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413, from its
    Content-Length before any of it is read, else as soon as the bytes received pass it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def message(self) -> str:
        return f"upload over the limit of {self.max_bytes} bytes (--max-upload-mb)"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, {"error": self.message()})
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise UploadTooLarge(self.message())
            return message

        await self.app(scope, counted_receive, send)


async def send_json(send: Any, status: int, payload: dict) -> None:
    """Answer an ASGI request with a JSON body."""
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def decode_upload(data: bytes, name: str, limits: "DataLimits | None" = None) -> Any:
    """An uploaded file's bytes -> ``Tensor[3, H, W]`` uint8 RGB, decoded as
    :func:`tinyssd.data.base.read_image` decodes files (EXIF orientation, any mode,
    the pixel budget checked from the header before decoding).

    Raises:
        ImageTooLarge: over the pixel budget, or refused by Pillow's decompression-bomb
            check; DataError: not a readable image. Messages name the upload by ``name``.
    """
    from .data.base import ImageTooLarge, read_image
    from .data.limits import DataLimits
    from .errors import DataError

    limits = limits if limits is not None else DataLimits.from_env()
    with tempfile.TemporaryDirectory(prefix="tinyssd-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        check_pillow_limit(path, name, limits.max_pixels)
        try:
            return read_image(path, limits)
        except ImageTooLarge as e:
            message = str(e).replace(str(path), name)
            raise ImageTooLarge(message.split(" (raise it")[0] + " (--max-pixels)") from None
        except DataError as e:
            raise DataError(str(e).replace(str(path), name)) from None


def check_pillow_limit(path: Path, name: str, budget: int) -> None:
    """ImageTooLarge (413) naming ``budget`` for an image that Pillow refuses to open.

    Pillow raises ``DecompressionBombError`` from ``Image.open`` (past twice
    ``Image.MAX_IMAGE_PIXELS``), before ``read_image`` reads the size from the header,
    and ``read_image`` calls that an unreadable image. Such an image is over any budget
    up to Pillow's limit; ``read_image`` lifts Pillow's limit for a budget above it. A
    ``DecompressionBombWarning`` turned into an error (``-W error``) is refused too.
    Reads only the header; a file Pillow cannot identify is left to ``read_image``.
    """
    from PIL import Image

    from .data.base import UNREADABLE_ERRORS, ImageTooLarge

    try:
        with Image.open(path):
            return
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        lifted = pillow_limit is not None and budget > 2 * pillow_limit
        if isinstance(e, Image.DecompressionBombError) and lifted:
            return
        raise ImageTooLarge(
            f"{name}: over the pixel budget of {budget} (--max-pixels): {e}"
        ) from None
    except UNREADABLE_ERRORS:  # not an image Pillow can open: read_image says why
        return


def check_upload_limit(max_upload_mb: float) -> None:
    """UsageError (one line) for an upload limit that is not a positive, finite size."""
    if not math.isfinite(max_upload_mb):
        raise UsageError(f"--max-upload-mb {max_upload_mb}: must be a finite number")
    if max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb {max_upload_mb}: must be positive")


def check_batching(max_batch: int, batch_wait_ms: float) -> None:
    """UsageError (one line) for batching settings out of range."""
    if max_batch < 1:
        raise UsageError(f"--max-batch {max_batch}: must be >= 1")
    if not 0 <= batch_wait_ms <= 10_000:
        raise UsageError(f"--batch-wait-ms {batch_wait_ms}: must be in 0..10000")


class BatchPredictor:
    """Predicts images that arrive together as one batch, on one worker thread.

    ``predict(image, post)`` queues the image and waits for its detections. The
    worker takes the first queued image, waits at most ``batch_wait_ms`` for up to
    ``max_batch - 1`` more, and predicts them together (one ``det.predict`` call
    per distinct ``post``): the network runs once per batch, and each image gets
    the detections it gets alone, up to float rounding. ``max_batch=1`` predicts
    one image at a time, in arrival order. ``requests`` and ``batches`` count what
    was predicted.
    """

    def __init__(self, det: "Predictor", max_batch: int = 8, batch_wait_ms: float = 2.0) -> None:
        check_batching(max_batch, batch_wait_ms)
        self.det = det
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1e3
        self.requests = 0
        self.batches = 0
        self._queue: queue.Queue[tuple[Any, PostprocessConfig, Future]] = queue.Queue()
        threading.Thread(target=self._work, name="tinyssd-batches", daemon=True).start()

    def predict(self, image: Any, post: PostprocessConfig) -> dict:
        """``det.predict(image, post=post)[0]``, batched with the images queued meanwhile."""
        done: Future = Future()
        self._queue.put((image, post, done))
        return done.result()

    def _next_batch(self) -> list[tuple[Any, PostprocessConfig, Future]]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            self.batches += 1
            self.requests += len(batch)
            for post in dict.fromkeys(p for _, p, _ in batch):  # in arrival order
                same = [(image, done) for image, p, done in batch if p == post]
                try:
                    dets = self.det.predict([image for image, _ in same], post=post)
                except Exception as e:  # answered as a 500 by the request, logged by uvicorn
                    for _, done in same:
                        done.set_exception(e)
                    continue
                for (_, done), d in zip(same, dets, strict=True):
                    done.set_result(d)


def predict_upload(
    predictor: BatchPredictor,
    data: bytes,
    name: str,
    post: PostprocessConfig,
    limits: "DataLimits | None" = None,
    decoding: "threading.Semaphore | None" = None,
) -> dict:
    """Decode and predict one uploaded image; the JSON dict ``POST /predict`` answers.

    ``decoding`` bounds the decoded images held at once (each up to the pixel budget).
    """
    from .predict.output import detection_line

    with decoding if decoding is not None else nullcontext():
        image = decode_upload(data, name, limits)
        d = predictor.predict(image, post)
    width, height = int(image.shape[2]), int(image.shape[1])
    return {"image": name, **detection_line(d, width=width, height=height)}


def create_app(
    det: "Predictor",
    post: PostprocessConfig | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    limits: "DataLimits | None" = None,
    max_batch: int = 8,
    batch_wait_ms: float = 2.0,
) -> "FastAPI":
    """The FastAPI app of ``tinyssd serve``: ``GET /``, ``GET /health``, ``POST /predict``.

    ``post``: the post-processing settings (default ``PostprocessConfig()``);
    ``limits``: the pixel budget of an upload (default ``DataLimits.from_env()``);
    ``max_batch``, ``batch_wait_ms``: how requests are batched (``BatchPredictor``).
    """
    fastapi = require("fastapi", "serve")
    require("python_multipart", "serve")  # Starlette parses uploads with it
    from fastapi import Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse

    from .data.limits import DataLimits
    from .predict.base import resolve_for_model

    check_upload_limit(max_upload_mb)
    post = resolve_for_model(det.score_threshold, post, None)  # the model's own by default
    # DataError (one line) for a bad $TINYSSD_MAX_PIXELS
    limits = limits if limits is not None else DataLimits.from_env()
    max_bytes = int(max_upload_mb * 1_000_000)
    predictor = BatchPredictor(det, max_batch, batch_wait_ms)
    # decoded images held at once: a batch being predicted and the next one gathering
    decoding = threading.BoundedSemaphore(2 * max_batch)
    app = fastapi.FastAPI(title="tinyssd", docs_url="/docs", redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=max_bytes)
    add_error_handlers(app)
    health = {
        "status": "ok",
        "classes": det.classes,
        "image_size": det.image_size,
        "device": str(getattr(det, "device", "cpu (onnxruntime)")),
        "threshold": post.score_threshold,
        "max_upload_bytes": max_bytes,
        "max_pixels": limits.max_pixels,
        "max_batch": max_batch,
        "batch_wait_ms": batch_wait_ms,
    }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("tinyssd").joinpath("serve_page.html").read_text("utf-8")

    @app.get("/health")
    def get_health() -> dict:
        return {
            **health,
            "predicted": {"requests": predictor.requests, "batches": predictor.batches},
        }

    @app.post("/predict")
    async def predict(
        request: Request,
        threshold: float = Query(post.score_threshold, ge=0.0, le=1.0),
    ) -> dict:
        data, name = await read_upload(request)
        asked = replace(post, score_threshold=threshold)
        return await run_in_threadpool(
            predict_upload, predictor, data, name, asked, limits, decoding
        )

    return app


async def read_upload(request: Any) -> tuple[bytes, str]:
    """The image bytes of a request and a name for them: the first file of a
    multipart/form-data request (``curl -F file=@photo.jpg``), else the whole body
    (``curl --data-binary @photo.jpg``).

    Raises:
        HTTPException: 400 no file in the request, or an empty one.
    """
    from starlette.exceptions import HTTPException

    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data, name = await _first_file(request)
    else:
        data, name = await request.body(), "upload"
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    return data, name


async def _first_file(request: Any) -> tuple[bytes, str]:
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    form = await request.form(max_files=1, max_fields=20)
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(400, "no file in the form: send the image as field 'file'")
        return await files[0].read(), files[0].filename or "upload"
    finally:
        await form.close()


def add_error_handlers(app: "FastAPI") -> None:
    """Every error answered as JSON ``{"error": "one line"}``; tracebacks stay in the log."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from .data.base import ImageTooLarge
    from .errors import DataError

    def error(status: int, message: object) -> JSONResponse:
        return JSONResponse({"error": str(message)}, status_code=status)

    @app.exception_handler(HTTPException)
    async def on_http(request: Any, e: HTTPException) -> JSONResponse:
        return error(e.status_code, e.detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Any, e: RequestValidationError) -> JSONResponse:
        return error(
            422, "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in e.errors())
        )

    @app.exception_handler(DataError)
    async def on_data(request: Any, e: DataError) -> JSONResponse:
        return error(413 if isinstance(e, ImageTooLarge) else 422, e)

    @app.exception_handler(UploadTooLarge)
    async def on_too_large(request: Any, e: UploadTooLarge) -> JSONResponse:
        return error(413, e)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Any, e: ClientDisconnect) -> JSONResponse:
        # the client went away mid-upload: nobody reads the answer, one log line says why
        client = request.client
        where = f"{client.host}:{client.port}" if client else "a client"
        log.warning("%s disconnected before its upload ended; request dropped", where)
        return error(400, "client disconnected before the upload ended")

    @app.exception_handler(Exception)
    async def on_crash(request: Any, e: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return error(500, "internal error (details in the server's log)")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); UsageError if it cannot."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise UsageError(f"--host {host}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"--host {host} --port {port}: cannot listen ({e.strerror or e})"
        ) from None
    return sock


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (an IPv6 zone such as ``%eth0`` is ignored)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def serve(
    weights: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    precision: str = "auto",
    post: PostprocessConfig | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    limits: "DataLimits | None" = None,
    max_batch: int = 8,
    batch_wait_ms: float = 2.0,
) -> None:
    """Serve a run folder, checkpoint or ``.onnx`` until Ctrl-C (``tinyssd serve``).

    ``post`` (default ``PostprocessConfig()``) selects the detections; ``limits``
    (default ``DataLimits.from_env()``) bound an upload's pixels and the input size the
    model claims (``load``'s ``max_pixels``); up to ``max_batch``
    requests arriving within ``batch_wait_ms`` are predicted together.
    """
    from .data.limits import DataLimits
    from .predict import load

    uvicorn = require("uvicorn", "serve")
    check_upload_limit(max_upload_mb)
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be 0 (any free port) to 65535")
    check_batching(max_batch, batch_wait_ms)  # before the model loads
    limits = limits if limits is not None else DataLimits.from_env()
    det = load(weights, device, precision, limits.max_pixels)
    app = create_app(det, post, max_upload_mb, limits, max_batch, batch_wait_ms)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("tinyssd serve: http://%s:%d/ (Ctrl-C to stop)", url_host, bound_port)
    if not is_loopback(bound_host):
        log.warning("%s is reachable from other machines; the service has no authentication", host)
    config = uvicorn.Config(app, log_level="info", timeout_keep_alive=5)
    uvicorn.Server(config).run(sockets=[sock])
