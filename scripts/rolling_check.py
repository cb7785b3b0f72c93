"""The verdict of scripts/rolling-restart.sh: reads wrk's RESULT line (scripts/rolling-restart.lua)
and every session's record through the proxy, and says whether any request failed or any
session lost or doubled a request.

    python scripts/rolling_check.py WRK_OUTPUT BASE_URL CONNECTIONS SESSION_IDS_FILE

Each request feeds two tokens, so a session's answers must carry tokens_seen 4, 6, 8, ... (it
was created with two) with no gap and no repeat: a gap is a request applied whose answer no
client got (lost, or applied twice by a retry), a repeat one answered twice. Its record may be
ahead of its last answer only by the requests still in flight when wrk stopped (at most one per
connection)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

CREATED = 2  # tokens_seen after `{"text": "one ,"}`
STEP = 2  # each request's "one ,"


def main(output: str, base: str, connections: int, ids_file: str) -> int:
    text = Path(output).read_text()
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    problems: list[str] = []
    statuses = result["statuses"]
    failed = sum(n for s, n in statuses.items() if s != "200")
    errors = {k: v for k, v in result["errors"].items() if v and k != "status"}
    if failed:
        first = result["bodies"]
        problems.append(f"{failed} answers were not 200: {statuses}; first bodies {first}")
    if errors:
        problems.append(f"socket errors: {errors}")
    ids = Path(ids_file).read_text().split()
    sessions: dict[str, list[int]] = result["sessions"]
    ahead_total = 0
    for sid in ids:
        try:
            with urllib.request.urlopen(f"{base}/v1/sessions/{sid}", timeout=10) as r:
                record = json.load(r)["tokens_seen"]
        except urllib.error.HTTPError as e:
            problems.append(f"session {sid} lost: {e.code} {e.read()!r}")
            continue
        got = sorted(sessions.get(sid, []))
        want = list(range(CREATED + STEP, CREATED + STEP * (len(got) + 1), STEP))
        if got != want:
            gaps = sorted(set(want) - set(got))[:5]
            twice = sorted({n for n in got if got.count(n) > 1})[:5]
            problems.append(f"session {sid}: answers skip {gaps} or repeat {twice}")
        ahead = (record - (got[-1] if got else CREATED)) // STEP
        if not 0 <= ahead <= connections:
            problems.append(f"session {sid}: record {record}, last answer {got[-1:]}")
        ahead_total += max(0, ahead)
    answered = sum(len(v) for v in sessions.values())
    lat = result["latency_ms"]
    print(
        f"{result['requests']} requests in {result['seconds']:.0f} s "
        f"({result['requests'] / result['seconds']:.0f}/s), statuses {statuses}, "
        f"socket errors {errors or 'none'}; latency p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.0f} ms"
    )
    print(
        f"{len(ids)} sessions: {answered} answers, every session's answers "
        f"consecutive: {'no' if any('skip' in p for p in problems) else 'yes'}; "
        f"{ahead_total} requests still in flight when wrk stopped (applied, unanswered)"
    )
    for p in problems[:20]:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
