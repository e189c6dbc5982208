"""`matcher serve`: the HTTP service shop apps call with a room photo.

A thin FastAPI layer over ``matcher.service``; the query path is the CLI's. What keeps it safe:

- model work runs on a bounded pool of threads (``api_threads``), never on the event loop, so
  ``/livez`` answers while a slow match runs; at most ``api_max_queue`` requests wait for a thread and
  the next one gets **503** with ``Retry-After`` at once;
- the body size is checked before anything is parsed (**413**), from ``Content-Length`` and while the
  body streams in; a non-image is **415**, a photo that does not decode **422**;
- optional API keys (``X-API-Key``, **401**) and a per-key (or per-client) rate limit (**429**);
- a per-request timeout (**504**); the thread's slot is held until its work really ends, so the bound
  stays true;
- ``/metrics`` in the Prometheus format: requests per route and status, latency histograms, queue
  depth, stage timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import service
from ..settings import Settings

log = logging.getLogger(__name__)

FORM_OVERHEAD_BYTES = 256 * 1024  # multipart headers and the small fields around the photo
STAGES = ("find", "trace", "polish", "embed", "search", "rerank", "store")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# --- model work: a bounded pool -----------------------------------------------------------------------

class ModelRunner:
    """Query engines (one per model thread, loaded once) behind a bounded queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=settings.api_threads, thread_name_prefix="matcher-model")
        self._slots = threading.BoundedSemaphore(settings.api_threads + settings.api_max_queue)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.loaded = False
        self.load_error: str | None = None
        self._loading = False

    def engine(self):
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = service.query_engine(self.settings, tuple(self.settings.api_detectors))
            self._local.engine = engine
            self.loaded, self.load_error = True, None
        return engine

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self._slots.release()

    async def run(self, fn, *args):
        """``fn(engine, *args)`` on a model thread; 503 when the queue is full, 504 past the timeout."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, "overloaded", "the server is busy; retry shortly",
                           {"Retry-After": str(max(1, round(self.settings.api_timeout_s / 10)))})
        with self._lock:
            self.in_flight += 1

        def job():
            try:
                return fn(self.engine(), *args)
            finally:
                self._release()

        future = asyncio.get_running_loop().run_in_executor(self.executor, job)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.settings.api_timeout_s)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "timeout", f"no answer within {self.settings.api_timeout_s:g} s") from exc

    def load_in_background(self) -> None:
        """Load the models on a model thread (readiness), at most one attempt at a time."""
        with self._lock:
            if self.loaded or self._loading:
                return
            self._loading = True

        def load():
            try:
                self.engine()
            except Exception as exc:  # noqa: BLE001 - reported by /readyz
                self.load_error = str(exc).splitlines()[0][:200]
            finally:
                self._loading = False

        self.executor.submit(load)


# --- keys and rate limits -----------------------------------------------------------------------------

class Gate:
    """API keys (when configured) and a sliding one-minute rate limit per key, or per client address."""

    def __init__(self, settings: Settings) -> None:
        self.keys = [k.encode() for k in settings.api_keys]
        self.rate = settings.api_rate_per_minute
        self._seen: dict[str, deque] = {}
        self._lock = threading.Lock()

    def identity(self, request: Request) -> str:
        key = request.headers.get("x-api-key", "")
        if self.keys:
            if not key or not any(hmac.compare_digest(key.encode(), k) for k in self.keys):
                raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")
            return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        return "client-" + (request.client.host if request.client else "unknown")

    def admit(self, who: str) -> None:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(who, deque())
            while seen and now - seen[0] >= 60.0:
                seen.popleft()
            if len(seen) >= self.rate:
                wait = max(1, int(60.0 - (now - seen[0])) + 1)
                raise ApiError(429, "rate_limited", f"more than {self.rate} requests a minute", {"Retry-After": str(wait)})
            seen.append(now)


# --- body size, before parsing --------------------------------------------------------------------------

class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over ``limit`` bytes: from Content-Length at once, else while it streams in."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            return await self.app(scope, counted, send)
        except _BodyTooLarge:
            return await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, "too_large", f"the request is over {self.limit / 1e6:.1f} MB")
        await response(scope, receive, send)


# --- metrics ---------------------------------------------------------------------------------------------

class Metrics:
    def __init__(self, runner: ModelRunner) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("matcher_http_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("matcher_http_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self.stages = Histogram("matcher_stage_seconds", "Query-path stage timings", ["stage"],
                                buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=self.registry)
        queue = Gauge("matcher_queue_depth", "Match requests running or waiting for a model thread",
                      registry=self.registry)
        queue.set_function(lambda: runner.in_flight)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


# --- the app ---------------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runner = ModelRunner(settings)
    gate = Gate(settings)
    metrics = Metrics(runner)
    app = FastAPI(title="matcher", version="1", summary="Find catalog products in a room photo.")
    app.state.runner, app.state.settings = runner, settings

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.observe(route, response.status_code, time.perf_counter() - start)
        return response

    @app.get("/livez", summary="The process answers.")
    async def livez():
        return {"status": "ok"}

    @app.get("/readyz", summary="The database answers, an indexed catalog is active and the models are loaded.")
    async def readyz():
        state = await run_in_threadpool(service.readiness, settings)
        if state["database"] and state["index"] and not runner.loaded:
            runner.load_in_background()
        state["models"] = runner.loaded
        if runner.load_error:
            state["models_error"] = runner.load_error
        ready = state["database"] and state["index"] and runner.loaded
        return JSONResponse({"ready": ready, **state}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics.")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/match", summary="Find the furniture in a photo and rank catalog products for each piece.")
    async def match(
        request: Request,
        photo: Annotated[UploadFile, File(description="A room photo: JPEG, PNG or WebP.")],
        box: Annotated[Optional[list[str]], Form(description="x,y,w,h in pixels; repeat for several objects.")] = None,
        prompt: Annotated[Optional[str], Form(description="Every instance of a label, e.g. 'the armchairs'.")] = None,
        category: Annotated[Optional[str], Form(description="Search only this catalog category.")] = None,
        top_k: Annotated[int, Form(ge=1, le=50)] = 5,
        mask: Annotated[Optional[str], Form(description="'rle' to return each object's mask as COCO RLE.")] = None,
    ):
        who = gate.identity(request)
        gate.admit(who)
        boxes = _parse_boxes(box or [])
        if mask not in (None, "", "rle"):
            raise ApiError(422, "bad_request", "mask must be 'rle' or left out")
        data = await photo.read()
        result = await runner.run(_match_job, settings, who, photo.filename or "photo", data, boxes, prompt, category)
        for stage, seconds in result.timings.items():
            metrics.stages.labels(stage).observe(seconds)
        return _match_response(result, top_k, mask == "rle")

    async def found(what: str, lookup, key):
        info = await run_in_threadpool(lookup, settings, key)
        if info is None:
            raise ApiError(404, "not_found", f"no {what} {key!r}")
        return info

    @app.get("/v1/products/{sku:path}", summary="A catalog product.")
    async def product(sku: str):
        return await found("product", service.product_info, sku)

    @app.get("/v1/queries/{query_id}", summary="What a match stored.")
    async def stored(query_id: int):
        return await found("query", service.stored_query, query_id)

    return BodyLimit(app, settings.max_upload_bytes + FORM_OVERHEAD_BYTES)


def _parse_boxes(texts: list[str]):
    from ..query import parse_box

    boxes = []
    for text in texts:
        try:
            boxes.append(parse_box(text))
        except ValueError as exc:
            raise ApiError(422, "bad_request", f"box {text!r}: {exc}") from exc
    return boxes


def _match_job(engine, settings: Settings, who: str, filename: str, data: bytes, boxes, prompt, category):
    """On a model thread: check and store the photo, find its objects, match them (one stored query)."""
    from ..query import NotIndexedError
    from ..review import UploadError

    status = {"empty": 422, "too_large": 413, "not_image": 415, "undecodable": 422}
    try:
        path = service.save_upload(settings, filename, data)
    except UploadError as exc:
        raise ApiError(status.get(exc.kind, 422), exc.kind, str(exc)) from exc
    try:
        objects = None
        if not boxes and (prompt or not engine.detectors):
            objects = _learned_objects(settings, path, prompt, category)
            if not objects:
                raise ApiError(422, "nothing_found", f"nothing matching {prompt!r} was found in the photo" if prompt
                               else "no furniture was found in the photo: send boxes as box=x,y,w,h")
        categories = [category] * len(boxes) if category and boxes else None
        return engine.match(path, boxes=boxes or None, objects=objects, category_filter=bool(category), store=True,
                            source=f"api:{who}", box_categories=categories)
    except ApiError:
        path.unlink(missing_ok=True)
        raise
    except (ValueError, NotIndexedError) as exc:
        path.unlink(missing_ok=True)
        code = 503 if isinstance(exc, NotIndexedError) else 422
        raise ApiError(code, "not_ready" if code == 503 else "bad_request", str(exc)) from exc


def _learned_objects(settings: Settings, path, prompt: str | None, category: str | None):
    """Objects from the learned segmenter: the prompt's label, or every label it knows; without a model,
    422 saying that boxes are needed."""
    from ..imageio import load_image
    from ..segmentation.labels import UnknownPromptError
    from ..segmentation.model import MissingSegModelError
    from ..take_apart import all_instances, prompted_objects

    image = load_image(path, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
    try:
        found = prompted_objects(image, prompt, settings) if prompt else all_instances(image, settings)
    except MissingSegModelError as exc:
        raise ApiError(422, "boxes_needed", "this server has no detector and no segmentation model: send boxes "
                       "as box=x,y,w,h") from exc
    except UnknownPromptError as exc:
        raise ApiError(422, "unknown_prompt", str(exc)) from exc
    return [replace(d, category=category) if category else d for d in found[0]]


def _match_response(result, top_k: int, with_masks: bool) -> dict[str, Any]:
    objects = []
    for obj in result.objects:
        det = obj.detection
        entry = {
            "detection_id": obj.detection_id, "box": [round(v, 1) for v in det.box.xywh()], "label": det.label,
            "score": round(det.score, 4), "source": det.source,
            "mask_status": (obj.cutout.fail_reason or "ok") if obj.cutout else "no mask",
            "products": [{"rank": i + 1, "sku": c.sku, "title": c.title, "category": c.category,
                          "score": round(c.score, 4), "features": {k: round(v, 4) for k, v in c.features.items()},
                          "explanation": c.explanation} for i, c in enumerate(obj.candidates[:top_k])],
        }
        if with_masks and obj.full_mask is not None:
            from ..segmentation.data import encode_mask

            entry["mask"] = encode_mask(obj.full_mask)
        objects.append(entry)
    return {"query_id": result.query_id, "space": result.space, "reranker": result.reranker_version,
            "image": {"width": result.width, "height": result.height},
            "timings_s": {k: round(v, 4) for k, v in result.timings.items()}, "objects": objects}


def app_from_environment():
    """The uvicorn factory of `matcher serve` (settings from MATCHER_* variables)."""
    return create_app(Settings())


__all__ = ["create_app", "app_from_environment"]
