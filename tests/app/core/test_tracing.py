"""OpenTelemetry traces: one trace per request, its server span with the store's and the
engine's under it, the same on both request paths and both session stores; nothing at all
without OTLP_ENDPOINT; and, for real, spans sent over OTLP/HTTP by `python -m app`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from app.core import tracing
from app.core.config import Settings
from app.core.redact import session_tag
from app.main import create_app
from launchers import AppProcess
from tests.app.conftest import make_settings

GOLDEN_STORE = Path(__file__).parents[1] / "golden" / "store"  # gru-copy, committed
ROUTE = "/v1/sessions/{session_id}/next-word"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi"])
def traced(backend: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client of the app with its spans in memory, on each request path and session store."""
    exporter = InMemorySpanExporter()
    settings = make_settings(GOLDEN_STORE, FAST_PATH=request.param, **backend)
    with TestClient(create_app(settings, span_exporter=exporter)) as client:
        yield client, exporter
    assert tracing.tracer is None  # stopped with the app


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in spans}


def test_a_session_request_is_one_trace_of_route_store_and_engine(traced, backend):
    client, exporter = traced
    sid = client.post("/v1/sessions", json={"text": "one , two ,"}).json()["session_id"]
    exporter.clear()
    r = client.post(f"/v1/sessions/{sid}/next-word", json={"text": "three ,"})
    assert r.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    redis = backend["SESSION_BACKEND"] == "redis"
    store_ops = {"session.lease", "session.commit"} if redis else {"session.lease"}
    assert set(spans) == {f"POST {ROUTE}", "engine.step", *store_ops}
    server = spans.pop(f"POST {ROUTE}")
    assert len({s.context.trace_id for s in [server, *spans.values()]}) == 1
    assert server.parent is None and server.kind == SpanKind.SERVER
    for child in spans.values():  # siblings under the route's span, within its time
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    assert server.attributes is not None and dict(server.attributes) == {
        "http.request.method": "POST",
        "http.route": ROUTE,
        "url.path": f"/v1/sessions/{session_tag(sid)}/next-word",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "request.id": r.headers["x-request-id"],
        "gen_ai.response.model": r.headers["x-model-version"],
        "client.address": "testclient",
        "network.protocol.version": "1.1",
    }
    assert server.status.status_code == StatusCode.UNSET
    lease = spans["session.lease"]
    assert lease.attributes is not None
    assert lease.attributes["session.id"] == session_tag(sid)
    if redis:
        assert lease.kind == SpanKind.CLIENT and lease.attributes["db.system.name"] == "redis"
        assert lease.attributes["server.port"] == urlsplit(backend["REDIS_URL"]).port
        assert spans["session.commit"].start_time >= spans["engine.step"].end_time
    else:
        assert lease.kind == SpanKind.INTERNAL and "db.system.name" not in lease.attributes
    step = spans["engine.step"]
    assert step.attributes is not None
    assert step.attributes["engine.model"] == "gru-copy"
    assert step.attributes["gen_ai.usage.prompt_tokens"] == 2  # "three", ","
    assert step.attributes["engine.passes"] == 1 and step.attributes["engine.batch_size"] >= 1
    assert 0 <= step.attributes["gen_ai.latency.time_in_queue"] < 10
    assert lease.end_time is not None and step.start_time >= lease.end_time
    # never a session id, anywhere
    for span in exporter.get_finished_spans():
        assert span.attributes is not None
        assert all(sid not in str(v) for v in span.attributes.values()), span.name


def test_a_callers_traceparent_is_continued(traced):
    client, exporter = traced
    r = client.post(
        "/v1/next-word",
        json={"text": "one , two ,"},
        headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "x-request-id": "abc-1"},
    )
    assert r.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /v1/next-word", "engine.step"}
    server = spans["POST /v1/next-word"]
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {CALLER_TRACE}
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.parent.is_remote
    assert server.attributes is not None and server.attributes["request.id"] == "abc-1"


def test_a_generation_is_one_span_with_its_words(traced):
    client, exporter = traced
    r = client.post("/v1/continuation", json={"text": "one , two ,", "max_words": 4})
    sid = client.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
    with client.stream(  # a stream: through FastAPI on both paths
        "POST", f"/v1/sessions/{sid}/continuation", json={"max_words": 3, "stream": True}
    ) as s:
        events = [line for line in s.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200 and len(events) == 4  # 3 words, then the end
    spans = exporter.get_finished_spans()
    generations = [s for s in spans if s.name == "engine.generate"]
    assert len(generations) == 2
    servers = {s.context.span_id: s.name for s in spans if s.kind == SpanKind.SERVER}
    for gen, route, words in zip(
        generations,
        ["POST /v1/continuation", "POST /v1/sessions/{session_id}/continuation"],
        [4, 3],
        strict=True,
    ):
        assert gen.parent is not None and servers[gen.parent.span_id] == route
        assert gen.attributes is not None
        assert gen.attributes["gen_ai.usage.completion_tokens"] == words
        assert gen.attributes["engine.finish_reason"] == "length"
        assert gen.attributes["engine.passes"] >= words


def test_errors_follow_the_http_conventions(traced):
    """A 404 is the client's: no error status (its lease span names the error's kind); a
    500 is the server's: error status and the exception recorded."""
    client, exporter = traced
    r = client.post("/v1/sessions/no-such-session/next-word", json={"text": "one"})
    assert r.status_code == 404
    spans = by_name(exporter.get_finished_spans())
    server, lease = spans[f"POST {ROUTE}"], spans["session.lease"]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 404
    assert server.status.status_code == StatusCode.UNSET
    assert lease.attributes is not None and lease.attributes["error.type"] == "UnknownSession"
    assert lease.status.status_code == StatusCode.UNSET
    exporter.clear()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    client.app.state.service.next_word = broken
    r = client.post("/v1/next-word", json={"text": "one"})
    assert r.status_code == 500
    (server,) = exporter.get_finished_spans()
    assert server.name == "POST /v1/next-word" and server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None and server.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in server.events] == ["exception"]
    exporter.clear()
    r = client.get("/no/such/route")  # before any route: named by its method alone
    (server,) = exporter.get_finished_spans()
    assert r.status_code == 404 and server.name == "GET"
    assert server.attributes is not None and "http.route" not in server.attributes


def test_without_an_endpoint_nothing_is_set_up():
    """OTLP_ENDPOINT unset: no provider, no tracer, no spans (the checks see None), and
    FastAPI's own telemetry off, whatever provider a process may have installed."""
    app = create_app(make_settings(GOLDEN_STORE))
    with TestClient(app) as client:
        assert client.post("/v1/next-word", json={"text": "one ,"}).status_code == 200
        assert tracing.tracer is None and tracing._provider is None
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        assert app._native_telemetry.enabled() is False  # type: ignore[attr-defined]


def test_otlp_endpoint_is_checked_and_completed():
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("https://c/otlp") == "https://c/otlp/v1/traces"
    for bad in ("collector:4318", "grpc://c:4317", "http://:4318", "http://u:secret@c:99999"):
        with pytest.raises(ValidationError) as e:
            Settings(OTLP_ENDPOINT=bad)
        assert "OTLP_ENDPOINT" in str(e.value) and "secret" not in str(e.value)
    with pytest.raises(ValidationError):
        Settings(TRACE_SAMPLE_RATIO=1.5)


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps every ExportTraceServiceRequest posted to /v1/traces."""

    got: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            self.got.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_real_server_sends_its_spans_over_otlp_http():
    got: list[ExportTraceServiceRequest] = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), type("C", (Collector,), {"got": got}))
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
        app = AppProcess(GOLDEN_STORE, OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="hn-test")
        with app, app.client() as c:
            sid = c.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
            r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"})
            assert r.status_code == 200
        # stopped (SIGTERM): the batch processor sent what it held
        assert app.proc is not None and app.proc.returncode is not None
    finally:
        receiver.shutdown()
    spans = [
        (resource.resource, span)
        for request in got
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    services = {
        a.value.string_value for res, _ in spans for a in res.attributes if a.key == "service.name"
    }
    assert services == {"hn-test"}
    named = [s for _, s in spans if s.name == f"POST {ROUTE}"]
    assert len(named) == 1
    trace_id = named[0].trace_id
    rid = {a.key: a.value.string_value for a in named[0].attributes}["request.id"]
    assert rid == r.headers["x-request-id"]
    assert sorted(s.name for _, s in spans if s.trace_id == trace_id) == [
        f"POST {ROUTE}",
        "engine.step",
        "session.lease",
    ]
