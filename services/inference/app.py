"""The FastAPI inference service.

    unirec serve --workers 2                              # uvicorn, settings from UNIREC_SERVE_*
    uvicorn --factory services.inference.app:create_app   # the same app, for other servers

Routes: `POST /v1/predict`, `GET /v1/model`, `POST /v1/model/reload|rollback` (admin),
`GET /v1/status`, `GET /healthz`, `GET /readyz`, `GET /metrics`, the status page at `/`, and
`/openapi.json` + `/docs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import torch
from fastapi import FastAPI
from prometheus_client import multiprocess
from starlette.types import ASGIApp, Receive, Scope, Send

from core.logs import configure_logging, get_logger, log_event
from embedding.schema import FeatureSchema, load_schema
from services.inference.batcher import Batcher
from services.inference.churn import ChurnReader
from services.inference.deps import settings_of
from services.inference.errors import ServiceError, service_error_handler
from services.inference.follower import Follower
from services.inference.metrics import ServeMetrics
from services.inference.middleware import RequestObserver
from services.inference.model_holder import LoadFailed, ModelHolder, NothingToServe
from services.inference.routers import health, model, predict, status
from services.inference.settings import ServeSettings
from services.inference.source import ModelSource

logger = get_logger("serve")

T = TypeVar("T")
SourceFactory = Callable[[ServeSettings, FeatureSchema | None], ModelSource]


def store_source(settings: ServeSettings, expected_schema: FeatureSchema | None) -> ModelSource:
    """The model store named by the settings, read with the shared loader."""
    from services.inference.registry import StoreRegistry

    return StoreRegistry(settings.model_store, expected_schema)


def create_app(source_factory: SourceFactory | None = None) -> InferenceApp:
    """A new app; `source_factory` replaces the model store (tests, embedding the service elsewhere)."""
    metrics = ServeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = settings_of(app)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        expected = load_schema(settings.expected_schema) if settings.expected_schema else None
        source = (source_factory or store_source)(settings, expected)
        holder = ModelHolder(source, metrics, expected, settings.keep_versions)
        app.state.settings = settings
        app.state.holder = holder
        # A few long-lived scoring threads: torch keeps one thread team per calling thread, and
        # short-lived pool threads would each build (and spin) their own.
        app.state.scorer = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="unirec-score")
        app.state.batcher = Batcher(
            metrics, app.state.scorer, window_s=settings.batch_window_ms / 1000, max_events=settings.max_batch,
            inline_max_events=settings.inline_max_events, max_forwards=settings.inference_threads,
        )  # fmt: skip
        app.state.churn = ChurnReader(settings.redis_url, settings.churn.key_prefix)
        app.state.follower = None
        log_event(logger, "starting", source=source.describe(), **settings.redacted())
        if settings.api_key is None:
            log_event(logger, "no_api_key", logging.WARNING, detail="admin routes are open: set UNIREC_SERVE_API_KEY")
        try:
            served = await anyio.to_thread.run_sync(holder.start)
            log_event(logger, "ready", version=served.version)
        except (LoadFailed, NothingToServe) as exc:  # not ready; the follower keeps trying
            log_event(logger, "not_ready", logging.WARNING, detail=str(exc), store=source.describe())
        holder.delta_runner = _on_loop(asyncio.get_running_loop())
        if settings.follow:
            app.state.follower = Follower(
                holder, metrics, settings.redis_url, settings.poll_interval_s, settings.registry.channel
            )
            app.state.follower.start()
        try:
            yield
        finally:
            if app.state.follower is not None:
                await anyio.to_thread.run_sync(app.state.follower.stop)
            app.state.scorer.shutdown(wait=False, cancel_futures=True)
            if metrics.multiprocess:  # this worker's live gauges leave the shared directory with it
                multiprocess.mark_process_dead(os.getpid())
            log_event(logger, "stopped")

    app = InferenceApp(
        title="unirec inference",
        summary="Click probabilities from the latest exported unified-embedding model, swapped without downtime.",
        version="1",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    routes: set[str] = set()
    observe = {"metrics": metrics, "logger": get_logger("serve.access"), "routes": routes}
    app.add_middleware(RequestObserver, **observe)
    app.add_exception_handler(ServiceError, service_error_handler)
    app.include_router(predict.router, prefix="/v1")
    app.include_router(model.router, prefix="/v1")
    app.include_router(status.router, prefix="/v1")
    app.include_router(health.router)
    app.include_router(status.page_router)
    _document_msgspec_bodies(app)
    routes.update(app.openapi()["paths"], ("/", app.openapi_url, app.docs_url, app.redoc_url))
    app.predict_path = "/v1" + predict.ROUTE
    app.predict_handler = RequestObserver(predict.handle, **observe)
    return app


class InferenceApp(FastAPI):
    """FastAPI, with `POST /v1/predict` answered ahead of Starlette's middleware stack and router.

    Those layers (error and exception middlewares, the exit-stack middleware, matching through the
    included routers, FastAPI's request wrapper and response) cost more CPU per request than
    featurizing and scoring one event. The predict handler needs none of them (it is written against
    the ASGI scope, answers its own errors, and its 500s are uvicorn's), so the app calls it
    directly, under the same `RequestObserver`. Anything else, and predict under a root path (a
    mount), goes through the stack, to the documented route that gives the same answers.
    """

    predict_path: str | None = None
    predict_handler: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == self.predict_path
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and self.predict_handler is not None
        ):
            scope["app"] = self
            await self.predict_handler(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Callable[[], T]], T]:
    """Run a function on the event loop from another thread and wait for its result."""

    async def call(fn: Callable[[], T]) -> T:
        return fn()

    def run(fn: Callable[[], T]) -> T:
        return asyncio.run_coroutine_threadsafe(call(fn), loop).result()

    return run


def serve_app() -> InferenceApp:
    """The app as `unirec serve` runs it in each worker: JSON log lines, settings from the environment."""
    from services.inference.deps import get_settings

    configure_logging(get_settings().log_level, json_lines=True)
    return create_app()


def _document_msgspec_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies decoded by msgspec (declared with `openapi_extra`) to the components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(predict.REQUEST_SCHEMAS["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
