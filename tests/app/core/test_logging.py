"""The log lines: one JSON object each, with the fields operators and the tests read."""

import json
import logging
import sys

from app.core.observability import JsonFormatter


def record(name, level, msg, fields=None, exc_info=None):
    extra = {"fields": fields} if fields is not None else None
    r = logging.getLogger(name).makeRecord(name, level, "f.py", 1, msg, (), exc_info, extra=extra)
    r.created, r.msecs = 1700000000.25, 250.0
    return r


def test_a_line_is_time_level_logger_message_and_its_fields():
    fields = {"method": "GET", "path": "/v1/x", "status": 200, "ms": 1.5, "client": None}
    line = JsonFormatter().format(record("app.access", logging.INFO, "request", fields))
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message", *fields]
    assert entry["level"] == "info" and entry["logger"] == "app.access"
    assert entry["message"] == "request" and entry["status"] == 200 and entry["client"] is None
    assert len(entry["time"]) == len("2023-11-14T22:13:20") and "T" in entry["time"]
    assert "\n" not in line and "fields" not in entry


def test_an_exception_is_in_exc():
    try:
        raise ZeroDivisionError("nope")
    except ZeroDivisionError:
        r = record("app", logging.ERROR, "boom", exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(r))
    assert entry["level"] == "error" and entry["message"] == "boom"
    assert entry["exc"].startswith("Traceback") and "ZeroDivisionError: nope" in entry["exc"]


def test_an_access_line_is_the_line_the_formatter_writes_for_the_same_request():
    """The access log's lines are made by LogWriter._access from a tuple, not by the
    formatter from a record: they must be the same line, byte for byte."""
    from app.core.observability import LogWriter
    from app.core.redact import redact_path

    path, client, rid = "/v1/sessions/abc/next-word", ("10.0.0.7", 5123), b"trace-9"
    fields = {
        "method": "POST",
        "path": redact_path(path),
        "route": "/v1/sessions/{session_id}/next-word",
        "status": 200,
        "ms": 1.5,
        "client": "10.0.0.7:5123",
        "request_id": "trace-9",
        "model": "gru-copy@2",
    }
    line = LogWriter()._access(
        (1700000000.25, "POST", path, fields["route"], 200, 0.0015, client, rid, b"gru-copy@2")
    )
    assert line == JsonFormatter().format(record("app.access", logging.INFO, "request", fields))
    assert "abc" not in line
