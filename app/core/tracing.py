"""OpenTelemetry traces, off unless OTLP_ENDPOINT is set: one trace per request.

A request's trace: its SERVER span, named by method and route template
(`POST /v1/sessions/{session_id}/next-word`), made the same way by the fast path and by
ObservabilityMiddleware (`ServerSpan`); under it the session store's spans (`StoreSpans`:
`session.create`, `session.lease`, `session.delete`; Redis's also `session.commit`,
`session.describe`, `session.list`, as CLIENT spans of db.system.name redis) and the engine's
(`engine.step`, `engine.generate`: a job from its submission to its result). A batched
step serves many requests, so a request's engine span is its own wait, with the queue
time, the passes and the largest batch it ran in as attributes, not a span of the batch.
A caller's W3C `traceparent` is honoured: the request's trace goes on from it.

Off, nothing is set up: `tracer` stays None, and every place that would make a span checks
that once and does nothing else (no tracer call, no context attached). On, the SDK's
TracerProvider with a BatchSpanProcessor sends the spans to the collector over OTLP/HTTP from
a thread of its own, and is flushed and shut down when the app stops. The provider is this
module's, not OpenTelemetry's global one (which a process may set only once), so tests can
start and stop it; FastAPI's own telemetry is off (app.main).

What a span never holds, as the access log: a session id (its tag, `~3fa2b1c0`), a query
string (a listing's cursor is a session id), a text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from app.core.errors import EngineFailure, NotReady, ServiceError
from app.core.redact import redact_path, session_tag

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from app.core.config import Settings

log = logging.getLogger("app")
tracer: Tracer | None = None  # set while tracing is on: the one check of every span site
_provider: TracerProvider | None = None
NO_SPAN: AbstractContextManager[None] = nullcontext()  # what `with` a span is, when off
HTTP_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
TRACES_PATH = "/v1/traces"
STOP_S = 3.0  # the last spans' time to leave at the app's stop


def traces_url(endpoint: str) -> str:
    """The collector's OTLP/HTTP traces URL: `http://collector:4318` -> `.../v1/traces`."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def start(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Turn tracing on, to OTLP_ENDPOINT's collector (or to `exporter`, each span as it
    ends: tests); whether it is on. Off when neither is given: nothing is set up."""
    global tracer, _provider
    if exporter is None and settings.OTLP_ENDPOINT is None:
        return False
    # imported here: a server without traces never loads the SDK nor the exporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    stop()
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.OTEL_SERVICE_NAME}),
        sampler=ParentBased(TraceIdRatioBased(settings.TRACE_SAMPLE_RATIO)),
        shutdown_on_exit=False,  # stop() does it, when the app stops
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        assert settings.OTLP_ENDPOINT is not None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = traces_url(settings.OTLP_ENDPOINT)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        # the SDK's own warnings (a collector out of reach) as JSON lines, as ours
        sdk_log = logging.getLogger("opentelemetry")
        sdk_log.handlers[:] = logging.getLogger("app").handlers
        sdk_log.propagate = False
    _provider = provider
    tracer = provider.get_tracer("app")
    return True


def stop() -> None:
    """Turn tracing off, and send the spans still queued (at the app's stop). A collector out
    of reach would hold the exit while the exporter retries (up to its 10 s timeout): it gets
    STOP_S, then the process goes on without those spans."""
    global tracer, _provider
    provider, tracer, _provider = _provider, None, None
    if provider is None:
        return
    flush = threading.Thread(target=provider.shutdown, name="traces-flush", daemon=True)
    flush.start()
    flush.join(STOP_S)
    if flush.is_alive():
        log.warning("traces: the collector did not take the last spans within %g s", STOP_S)


# -- the server span -------------------------------------------------------------------------
class _AsgiHeaders(Getter[Iterable[tuple[bytes, bytes]]]):
    """What the W3C propagator reads of an ASGI scope's headers (names in lower case)."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        return [v.decode("latin-1") for k, v in carrier if k == name] or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_HEADERS = _AsgiHeaders()
_W3C = TraceContextTextMapPropagator()


class ServerSpan:
    """One HTTP request's SERVER span (OpenTelemetry's HTTP conventions), current while the
    request runs so that the store's and the engine's spans are its children. Made only
    while `tracer` is set. `end` once the answer went out (or `drop` it: a request the fast
    path hands to the whole stack, which makes its own)."""

    __slots__ = ("method", "span", "token")

    def __init__(self, scope: Scope, request_id: bytes):
        assert tracer is not None
        method: str = scope["method"]
        parent = _W3C.extract(scope["headers"], getter=_HEADERS)
        attributes: dict[str, Any] = {
            "http.request.method": method if method in HTTP_METHODS else "_OTHER",
            "url.path": redact_path(scope["path"][:200]),  # as the access log: no session id
            "url.scheme": scope.get("scheme", "http"),
            "request.id": request_id.decode(),
        }
        if method not in HTTP_METHODS:
            attributes["http.request.method_original"] = method[:20]
            method = "HTTP"
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        if version := scope.get("http_version"):
            attributes["network.protocol.version"] = version
        self.method = method
        self.span = tracer.start_span(method, parent, SpanKind.SERVER, attributes)
        self.token = otel_context.attach(trace.set_span_in_context(self.span, parent))

    def end(
        self, route: str | None, status: int, model: bytes | None, error: BaseException | None
    ) -> None:
        """`route`: the route template (None before the router: a refusal, a 404); `model`:
        the version that answered (NAME@VERSION); `error`: an exception that escaped."""
        otel_context.detach(self.token)
        span = self.span
        if span.is_recording():
            if route is not None:
                span.update_name(f"{self.method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if model is not None:
                span.set_attribute("gen_ai.response.model", model.decode())
            if error is not None:
                span.record_exception(error)
            if status >= 500:  # a server's 4xx is the client's fault, not an error of its span
                span.set_attribute(
                    "error.type", type(error).__qualname__ if error is not None else str(status)
                )
                span.set_status(StatusCode.ERROR)
        span.end()

    def drop(self) -> None:
        """Forget the span (never sent): the request goes on elsewhere, under a new one."""
        otel_context.detach(self.token)


# -- spans of the work ------------------------------------------------------------------------
def failed(span: Span, error: BaseException) -> None:
    """Mark `span` with the exception that ended its work: `error.type` always, the error
    status only for the server's own failures (not a client's unknown session, say)."""
    if isinstance(error, asyncio.CancelledError):  # the client left, or the server stops
        span.set_attribute("cancelled", True)
        return
    span.set_attribute("error.type", type(error).__qualname__)
    if not isinstance(error, ServiceError) or isinstance(error, NotReady | EngineFailure):
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, str(error)[:200])


@contextmanager
def _spanned(span: Span) -> Iterator[Span]:
    try:
        yield span
    except BaseException as e:
        failed(span, e)
        raise
    finally:
        span.end()


class StoreSpans:
    """The spans of one session store's operations: `session.<operation>`, with the store's
    kind and the session's tag; a Redis store's are CLIENT spans naming the server."""

    def __init__(self, store: str, host: str | None = None, port: int | None = None):
        self.attributes: dict[str, Any] = {"session.store": store}
        self.kind = SpanKind.INTERNAL
        if store == "redis":
            self.kind = SpanKind.CLIENT
            self.attributes["db.system.name"] = "redis"
            if host is not None:
                self.attributes["server.address"] = host
            if port is not None:
                self.attributes["server.port"] = port

    def start(self, operation: str, session_id: str | None) -> Span:
        """A span of `operation`, ended by the caller (`failed` first if it failed)."""
        assert tracer is not None
        span = tracer.start_span(f"session.{operation}", kind=self.kind, attributes=self.attributes)
        if session_id is not None:
            tag(span, session_id)
        return span

    def op(
        self, operation: str, session_id: str | None = None
    ) -> AbstractContextManager[Span | None]:
        """`with` it around an operation: its span, or None while tracing is off."""
        if tracer is None:
            return NO_SPAN
        return _spanned(self.start(operation, session_id))


def tag(span: Span, session_id: str) -> None:
    """The session a span is about: its tag, never its id (a secret without keys)."""
    if span.is_recording():
        span.set_attribute("session.id", session_tag(session_id))


class JobTrace:
    """A job's span in the engine (`engine.step` or `engine.generate`), from its submission
    to its result: the engine tells it of each pass it runs in (`passed`)."""

    __slots__ = ("batch", "first", "passes", "span", "submitted")

    def __init__(self, name: str, model: str, fed: int) -> None:
        assert tracer is not None
        self.span = tracer.start_span(
            name, attributes={"engine.model": model, "gen_ai.usage.prompt_tokens": fed}
        )
        self.submitted = time.perf_counter()
        self.first: float | None = None  # when its first pass began
        self.passes = 0
        self.batch = 0  # the largest batch it ran in

    def passed(self, began: float, rows: int) -> None:
        if self.first is None:
            self.first = began
        self.passes += 1
        self.batch = max(self.batch, rows)

    def end(
        self, error: BaseException | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        span = self.span
        if span.is_recording():
            if self.first is not None:  # vLLM's name for it, in seconds
                span.set_attribute("gen_ai.latency.time_in_queue", self.first - self.submitted)
            span.set_attribute("engine.passes", self.passes)
            span.set_attribute("engine.batch_size", self.batch)
            if attributes:
                span.set_attributes(attributes)
            if error is not None:
                failed(span, error)
        span.end()
