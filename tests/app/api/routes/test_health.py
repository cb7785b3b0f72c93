import asyncio

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.app.conftest import VARIANTS, make_settings, run_app


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "models": list(VARIANTS),
        "skipped": [],
        "problem": None,
    }


def test_not_ready_before_the_models_are_loaded(store):
    app = create_app(make_settings(store))
    c = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    r = c.post("/v1/next-word", json={"text": "one"})
    assert r.status_code == 503 and "not ready" in r.json()["detail"]
    assert c.get("/health").status_code == 200


def test_draining_refuses_new_work_and_answers_the_probes(client):
    """Once the drain begins (SIGTERM: app.api.shutdown), /ready says 503 at once, a new
    request gets a 503 that says to retry elsewhere and closes its connection, in OpenAI's
    shape on its routes, on both request paths; /health and /metrics still answer."""
    sid = client.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
    before = client.get(f"/v1/sessions/{sid}").json()
    client.app.state.drain.begin()
    r = client.get("/ready")
    assert r.status_code == 503
    assert r.json() == {
        "status": "not_ready",
        "models": list(VARIANTS),
        "skipped": [],
        "problem": "draining: the server is shutting down",
    }
    for path, body in [
        ("/v1/next-word", {"text": "one , two ,"}),
        (f"/v1/sessions/{sid}/next-word", {"text": "two ,"}),
        ("/v1/sessions", {"text": "one"}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 503, path
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert r.json()["detail"].startswith("the server is shutting down (draining)")
        assert r.headers["x-request-id"]  # logged and counted like any answer
    r = client.post("/v1/completions", json={"prompt": "one ,", "max_tokens": 2})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable_error"
    assert client.get("/health").json() == {"status": "ok"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="unmatched",status="503"' in metrics.text  # refused before the router
    client.app.state.drain.since = None
    assert client.get(f"/v1/sessions/{sid}").json() == before  # untouched by the refusals


def test_metrics(client):
    client.get("/v1/models")  # no model answers it: an empty version
    client.post("/v1/next-word", json={"text": "one , two"})
    client.post("/v1/next-word", json={"text": "eleventy"})
    client.post("/v1/sessions", json={"text": "one"})
    client.post("/v1/continuation", json={"text": "one", "max_words": 3, "model": "gru-cell"})
    text = client.get("/metrics").text
    assert 'model_generated_words_total{model="gru-cell",version="1"} 3.0' in text
    ok = 'http_requests_total{method="POST",route="/v1/next-word",status="200",version="gru@1"}'
    assert f"{ok} 1.0" in text  # the version that answered, and 422 too (its vocabulary)
    bad = 'http_requests_total{method="POST",route="/v1/next-word",status="422",version="gru@1"}'
    assert f"{bad} 1.0" in text
    assert 'http_requests_total{method="GET",route="/v1/models",status="200",version=""}' in text
    assert (
        'http_request_duration_seconds_bucket{le="0.5",method="POST",route="/v1/next-word"}' in text
    )
    assert 'sessions_live{model="gru"} 1.0' in text
    assert 'model_tokens_total{model="gru",version="1"} 4.0' in text  # 3 + 1 tokens fed
    assert 'model_batch_size_count{model="gru",version="1"} 2.0' in text


def samples(text: str, model: str = "gru") -> dict[str, float]:
    """The /metrics samples of one model, by name (and `le` for a bucket)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") == model:
                out[s.name + (f"@{s.labels['le']}" if "le" in s.labels else "")] = s.value
    return out


def test_engine_metrics_count_first_words_and_the_gaps_between_words(client):
    """Every job's first word (a next-word's answer, a generation's first word) and every
    gap between two words of one generation, on every route that reaches the engine."""
    sid = client.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]  # a step
    for r in (
        client.post("/v1/next-word", json={"text": "one , two"}),  # 1 first word
        client.post("/v1/next-word", json={"text": "eleventy"}),  # 422: never queued
        client.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"}),  # 1
        client.post("/v1/continuation", json={"text": "one ,", "max_words": 3}),  # 1, 2 gaps
        client.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 2}),  # 1, 1
        client.post("/v1/completions", json={"prompt": "one ,", "max_tokens": 3, "n": 2}),
    ):  # the completion: 2 first words, 4 gaps
        assert r.status_code in (200, 422), r.text
    with client.stream(
        "POST", "/v1/continuation", json={"text": "one", "max_words": 2, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.read()  # 1, 1
    got = samples(client.get("/metrics").text)
    assert got["time_to_first_token_seconds_count"] == 1 + 1 + 1 + 1 + 1 + 2 + 1
    assert got["inter_token_latency_seconds_count"] == 2 + 1 + 4 + 1
    assert got["model_generated_words_total"] == 3 + 2 + 6 + 2
    ttft = got["time_to_first_token_seconds_count"]
    assert got["time_to_first_token_seconds_bucket@+Inf"] == ttft
    assert 0 < got["time_to_first_token_seconds_sum"] < 10
    assert got["num_requests_running"] == 0 and got["num_requests_waiting"] == 0
    assert samples(client.get("/metrics").text, "gru-cell")["num_requests_waiting"] == 0
    assert "process_cpu_seconds_total" in client.get("/metrics").text  # Linux


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_jobs_waiting_then_running_while_the_engine_holds_them(store, fast_path):
    """BATCH_WAIT_MS holds the engine: each pass waits half a second for a fuller batch. Two
    next-words and a continuation wait together; the first pass answers the next-words and
    takes the continuation's first word, which then runs between its passes."""
    app = create_app(
        make_settings(store, FAST_PATH=fast_path, DEFAULT_MODEL="gru", BATCH_WAIT_MS=500)
    )

    async def scenario(c):
        async def until(check):
            for _ in range(200):
                got = samples((await c.get("/metrics")).text)
                if check(got):
                    return got
                await asyncio.sleep(0.01)
            raise AssertionError(f"never seen: {got}")

        requests = [
            asyncio.create_task(c.post("/v1/next-word", json={"text": "one"})),
            asyncio.create_task(c.post("/v1/next-word", json={"text": "two"})),
            asyncio.create_task(c.post("/v1/continuation", json={"text": "one", "max_words": 3})),
        ]
        held = await until(lambda got: got["num_requests_waiting"] == 3)
        going = await until(lambda got: got["num_requests_waiting"] == 0)
        answers = await asyncio.gather(*requests)
        return held, going, answers, samples((await c.get("/metrics")).text)

    held, going, answers, done = run_app(app, scenario)
    assert all(r.status_code == 200 for r in answers)
    assert held["num_requests_running"] == 0
    assert going["num_requests_running"] == 1  # the continuation, between its words
    assert (done["num_requests_running"], done["num_requests_waiting"]) == (0, 0)
    # every first word waited for the held pass: none within a quarter of a second
    assert done["time_to_first_token_seconds_count"] == 3
    assert done["time_to_first_token_seconds_bucket@0.25"] == 0
    assert done["inter_token_latency_seconds_count"] == 2
    assert done["inter_token_latency_seconds_bucket@0.25"] == 0  # the passes wait too


def test_docs_and_an_example_on_every_request_field(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/next-word",
        "/v1/continuation",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/next-word",
        "/v1/sessions/{session_id}/continuation",
        "/v1/sessions/{session_id}/reset",
        "/v1/models",
        "/v1/models/{name}",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    for name, schema in schemas.items():
        if not name.endswith("Request"):
            continue
        for field, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
            has_example = "examples" in prop or "default" in prop
            assert has_example, f"{name}.{field} has no example"
