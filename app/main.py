"""The FastAPI app: wiring only. `uvicorn app.main:app` serves it with settings from the env."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import get_owner
from app.api.edge import BodyDeadlines, BoundedRequests
from app.api.errors import install_error_handlers, internal_error
from app.api.fastpath import FastPath
from app.api.gate import KeyGate
from app.api.openapi import install_openapi
from app.api.ratelimit import RATE_LIMIT_HEADERS, RateLimiter, RateLimits
from app.api.routes import admin, completions, health, models, predict, sessions, tokenize
from app.api.shutdown import Drain, ShutdownAnswers
from app.core import tracing
from app.core.config import Settings
from app.core.errors import NotReady
from app.core.observability import (
    Metrics,
    ObservabilityMiddleware,
    RequestIds,
    configure_logging,
    flush_logs,
)
from app.core.security import ApiKeys
from app.engine.engine import EngineConfig
from app.engine.registry import ModelRegistry
from app.pages import DOCS_PATHS, install_pages
from app.serving.admin import ModelAdmin
from app.serving.redis_sessions import RedisSessionStore
from app.serving.service import PredictionService
from app.serving.sessions import MemorySessionStore, SessionStore

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("app")
GC_THRESHOLDS = (50_000, 20, 100)  # CPython's defaults are (700, 10, 10)


async def sweep_expired(store: SessionStore, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            if n := await store.expire():
                log.info("expired %d idle sessions", n)
        except NotReady as e:
            log.warning("session sweep skipped: %s", e.detail)


async def open_session_store(settings: Settings, registry: ModelRegistry) -> SessionStore:
    if settings.SESSION_BACKEND == "memory":
        return MemorySessionStore(
            settings.SESSION_TTL_SECONDS,
            settings.MAX_SESSIONS,
            settings.SESSION_CAP_POLICY,
            max_per_owner=settings.MAX_SESSIONS_PER_KEY,
        )
    store = RedisSessionStore(
        settings.REDIS_URL,
        registry,
        settings.SESSION_TTL_SECONDS,
        settings.MAX_SESSIONS,
        settings.SESSION_CAP_POLICY,
        prefix=settings.REDIS_PREFIX,
        lock_s=settings.SESSION_LEASE_SECONDS,
        wait_s=settings.SESSION_LEASE_WAIT_SECONDS,
        max_per_owner=settings.MAX_SESSIONS_PER_KEY,
    )
    try:
        await store.check()
        await store.expire()
    except NotReady as e:  # start anyway: /ready says 503 until Redis answers
        log.error("%s", e.detail)
    return store


class ServiceApp(FastAPI):
    """FastAPI, with the fast path (app.api.fastpath) in front of everything: the hot routes
    in one pass, everything else through FastAPI and its whole middleware stack. In front of
    FastAPI's own `__call__` too, whose native telemetry (off: see create_app) would ask
    OpenTelemetry for its three providers on every request before anything else runs."""

    fast_path: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        drain: Drain = self.state.drain
        drain.inflight += 1  # the drain waits for these (a stream until its last event)
        try:
            # while draining, the whole stack answers: its 503s (app.api.shutdown)
            if not self.state.settings.FAST_PATH or drain.since is not None:
                await super().__call__(scope, receive, send)
                return
            if self.fast_path is None:  # built on the first request, once every route is in
                self.fast_path = FastPath(super().__call__, self)
            scope["app"] = self
            await self.fast_path(scope, receive, send)
        finally:
            drain.inflight -= 1


def create_app(
    settings: Settings | None = None, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """The app; its traces go to OTLP_ENDPOINT, or to `span_exporter` when given (tests)."""
    settings = settings or Settings()
    configure_logging(settings.LOG_LEVEL)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.TORCH_THREADS)
        registry = ModelRegistry.load(
            settings.STORE,
            settings.DEVICE,
            settings.DEFAULT_MODEL,
            EngineConfig(
                max_batch=settings.MAX_BATCH_SIZE,
                max_queue=settings.MAX_QUEUE,
                batch_wait_s=settings.BATCH_WAIT_MS / 1000,
            ),
            settings.CELL_MODE,
        )
        store = await open_session_store(settings, registry)
        registry.on_engine = lambda lm: lm.engine.observe(
            metrics.batch_observer(lm.name, lm.version)
        )
        for lm in registry.loaded():
            registry.on_engine(lm)
            lm.engine.start()
        sweeper = asyncio.create_task(sweep_expired(store, min(30.0, settings.SESSION_TTL_SECONDS)))
        app.state.service = PredictionService(registry, store, settings)
        model_admin = ModelAdmin(registry, store, settings)
        await model_admin.start()  # the fleet's state (Redis), the store's poller
        app.state.admin = model_admin
        app.state.rate_limiter = RateLimiter.from_settings(settings)
        # Everything built so far lives as long as the process: move it out of the cyclic
        # GC's sight, and collect less often. Full collections over the frameworks' and
        # torch's objects were a third of the CPU time under load, and the p99 latency.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if tracing.start(settings, span_exporter):
            log.info("traces on, as service %s", settings.OTEL_SERVICE_NAME)
        log.info("ready: %s (default %s)", ", ".join(registry.models), registry.default)
        try:
            yield
        finally:
            app.state.service = None  # /ready turns 503 while draining
            app.state.admin = None
            sweeper.cancel()
            await model_admin.stop()
            await registry.stop()
            await store.close()
            if app.state.rate_limiter is not None:
                await app.state.rate_limiter.close()
            tracing.stop()  # the last spans sent
            log.info("stopped")
            flush_logs()

    app = ServiceApp(
        title="Human Numbers next-word service",
        version="1.0.0",
        description="Next-word prediction and continuation with the GRU language models of "
        "fast.ai's Human Numbers lesson, with sessions that keep their hidden state.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: install_pages, with packaged assets
        redoc_url=None,
        # FastAPI's own spans would cover the stack and not the fast path, and name session
        # ids (url.path): app.core.tracing makes the service's, on both paths
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    keys = ApiKeys(settings.api_keys())
    app.state.settings = settings
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.request_ids = RequestIds()
    app.state.body_deadlines = BodyDeadlines(settings.BODY_TIMEOUT_SECONDS)
    app.state.service = None
    app.state.admin = None
    app.state.drain = Drain()  # python -m app's server begins it on SIGTERM
    app.state.admin_keys = ApiKeys(settings.admin_api_keys())
    app.state.rate_limiter = None
    metrics.add_gauge(
        "sessions_live",
        "live sessions by model",
        lambda: app.state.service.sessions.counts() if app.state.service else {},
    )

    def engine_jobs() -> list[tuple[str, int, int, int]]:
        """(model, version, running, waiting) of every engine: its gauges, at scrape time."""
        service = app.state.service
        if service is None:
            return []
        return [(lm.name, lm.version, *lm.engine.jobs()) for lm in service.registry.loaded()]

    metrics.add_engine_gauges(engine_jobs)
    metrics.add_prefix_cache(
        lambda: app.state.service.prefix_cache.counts() if app.state.service else ()
    )
    install_error_handlers(app)
    app.include_router(health.router)
    # every /v1 route needs a key, when keys are on
    for module in (models, predict, sessions, completions, tokenize):
        app.include_router(module.router, dependencies=[Depends(get_owner)])
    if app.state.admin_keys.enabled:  # the admin API: only with admin keys, only for them
        app.include_router(admin.router)
    install_pages(app)
    install_openapi(app, settings)
    # Middleware, innermost first: the rate limits, the request bounds, CORS, the shutdown's
    # answers, then ids, logs and metrics around everything (the 413s, 429s, 431s, CORS
    # refusals and 503s). The hot routes do it all in one pass ahead of them (ServiceApp).
    app.add_middleware(RateLimits, fastapi_app=app)
    gated = {"/metrics"} if settings.AUTH_METRICS else set()
    if settings.AUTH_DOCS:
        gated |= {path for path in (app.openapi_url, *DOCS_PATHS) if path}
    if keys.enabled and gated:
        app.add_middleware(KeyGate, keys=keys, paths=frozenset(gated))
    app.add_middleware(
        BoundedRequests,
        max_body=settings.MAX_BODY_BYTES,
        deadlines=app.state.body_deadlines,
        max_headers=settings.MAX_HEADER_BYTES,
    )
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-Session-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-Model-Version",
                "Retry-After",
                *RATE_LIMIT_HEADERS,
            ],
        )
    # while draining, 503s for new requests; at the drain's end, for those left, and stream
    # error events
    app.add_middleware(ShutdownAnswers, drain=app.state.drain)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        failure=internal_error,
        request_ids=app.state.request_ids,
        log_requests=settings.ACCESS_LOG,
    )
    return app


def __getattr__(name: str) -> FastAPI:
    """`uvicorn app.main:app` builds the app on first access, reading settings then."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
