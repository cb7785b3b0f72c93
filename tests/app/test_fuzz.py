"""Schemathesis against the real server: every operation of the OpenAPI document, with every
check, through the examples, coverage, fuzzing and stateful phases (sessions created, read,
fed, continued, deleted in the orders the links allow), from a fixed seed.

What schemathesis is told beyond the document is in FUZZ_CONFIG below, each line with why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers import AppProcess

SEED = 1
MAX_EXAMPLES = 50
# One: schemathesis's workers are threads, and hypothesis parses source (ast) in each to
# describe its strategies; CPython 3.11's ast keeps one recursion count for all threads, so
# two at once can crash the run ("AST constructor recursion depth mismatch", CPython issue
# 106905): it crashed twice in a row in one run with 2 workers here. One worker costs a few
# seconds a run.
WORKERS = 1
BOUND_SECONDS = 150  # a run; about 15 s on 2 shared cores

# `schemathesis.toml`, written to the test's own folder.
FUZZ_CONFIG = """\
# Schema-invalid input must be refused with a 4xx that says why. Beyond the defaults
# (400 401 403 404 406 422 428), a text over `maxLength` (MAX_TEXT_CHARS) gets 413, the
# status the document lists for "text too long".
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 406, 413, 422, 428]

# Schema-valid input is accepted: 2XX, or 404 for a model or session id that does not exist.
# The document states every bound (`minimum`/`maximum`, `maxLength`), so nothing else is
# excused on routes that take no words.
[checks.positive_data_acceptance]
expected-statuses = ["2XX", 404]

# What a JSON Schema cannot say: words outside the vocabulary in a text or a stop list, ids
# outside it to detokenize, and a `cursor` that this server did not give (422).
[[operations]]
include-path-regex = "^/v1/(sessions|(sessions/[^/]+/)?(next-word|continuation)|detokenize)$"
checks.positive_data_acceptance.expected-statuses = ["2XX", 404, 422]

# The admin API (on with ADMIN_API_KEYS) refuses with 409 a change that does not fit the
# models' state, which a schema cannot say: unloading a default, a split that does not sum
# to 100, promoting a version below the quality gate.
[[operations]]
include-path-regex = "^/admin/"
checks.positive_data_acceptance.expected-statuses = ["2XX", 404, 409]

# OpenAI's protocol answers 400 (invalid_request_error) to what its schema cannot say either,
# such as several prompts for one session, or `best_of` below `n`.
[[operations]]
include-path = "/v1/completions"
checks.positive_data_acceptance.expected-statuses = ["2XX", 400, 404, 422]
"""


def run_schemathesis(base: str, tmp_path: Path, *extra: str) -> tuple[int, str, float]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(FUZZ_CONFIG)
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{base}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--checks",
        "all",
        # The stateful check "created resource not found" (ST302) takes any 404 after a create
        # for the session gone, but a reset's body may name a model that does not exist: 404,
        # as on every route. Turned off for the reset route in the config, it still fired
        # there in CI (once in many runs): it is off here. Sessions found after their create,
        # and gone only when deleted or expired, are the route tests' (test_sessions.py).
        "--exclude-checks",
        "ensure_resource_availability",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        str(WORKERS),
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-shrink",
        *extra,
    ]
    started = time.monotonic()
    r = subprocess.run(
        cmd,
        cwd=tmp_path,  # its .schemathesis and .hypothesis folders: here, not in the repository
        capture_output=True,
        text=True,
        timeout=BOUND_SECONDS + 30,
    )
    return r.returncode, r.stdout + r.stderr, time.monotonic() - started


KEY = "fuzz-key-0123456789abcdef"
TOOL_CRASH = "AST constructor recursion depth mismatch"  # a Runtime Error of hypothesis's own


@pytest.fixture(params=[None, "API_KEYS", "ADMIN_API_KEYS"], ids=["no-keys", "api-keys", "admin"])
def server(store: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """The server as deployed: without API keys, or with one (schemathesis then also checks
    that /v1 refuses requests without it, or with another); or with the admin API on and an
    admin key (its routes fuzzed too; /v1 open), on a store of its own (the admin routes
    load and unload its versions)."""
    env = {
        "ACCESS_LOG": "false",
        "STATE_SIGNING_KEY": "fuzz-state-key-0123456789",  # the state routes on, not 501
        **({request.param: KEY} if request.param else {}),
    }
    if request.param == "ADMIN_API_KEYS":
        shutil.copytree(store, tmp_path / "store")
        store = tmp_path / "store"
    app = AppProcess(store, **env).start()
    yield app, request.param is not None
    app.kill()


def test_schemathesis_finds_nothing(server: tuple[AppProcess, bool], tmp_path: Path):
    app, keyed = server
    auth = ["--header", f"Authorization: Bearer {KEY}"] if keyed else []
    code, output, seconds = run_schemathesis(app.base, tmp_path, *auth)
    if code != 0 and TOOL_CRASH in output and "= FAILURES =" not in output:
        # hypothesis itself crashed describing a strategy (CPython 3.11's ast recursion
        # guard), not a finding about the server: run once more, the same seed
        code, output, seconds = run_schemathesis(app.base, tmp_path, *auth)
    assert code == 0, output
    assert " passed" in output and "Seed: 1" in output, output
    assert seconds < BOUND_SECONDS, output
