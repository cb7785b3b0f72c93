#!/usr/bin/env bash
# A rolling restart under load, on the real deployment (scripts/docker-local.sh builds and
# starts it: compose's scale profile, two replicas behind nginx, sessions in Redis):
#   scripts/rolling-restart.sh         (as root; about 8 minutes; SMOKE_KEEP=1 keeps it all)
# wrk drives session next-words through nginx at 64 connections (scripts/rolling-restart.lua)
# while each replica in turn is stopped (`docker stop`: SIGTERM, the app drains) and started
# again, and nginx reloaded (it resolves the replicas' addresses at its start and on reload).
# Passes when every answer was 200 with no socket error, and no session lost or doubled a
# request (scripts/rolling_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_TAG=rolling
# shellcheck source=scripts/docker-local.sh
source scripts/docker-local.sh
docker_up

CONNECTIONS=64
SESSIONS=256
SECONDS_UNDER_LOAD=${ROLLING_SECONDS:-90}
ids=$WORK/sessions.txt
log "creating $SESSIONS sessions through nginx"
$PY - "$L" "$SESSIONS" "$ids" <<'PYEOF'
import json, sys, urllib.request
base, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))
ids = [post("/v1/sessions", {"text": "one ,"})["session_id"] for _ in range(n)]
open(out, "w").write("\n".join(ids) + "\n")
PYEOF
log "wrk: $CONNECTIONS connections for $SECONDS_UNDER_LOAD s"
wrk -t2 -c$CONNECTIONS -d${SECONDS_UNDER_LOAD}s --timeout 10s -s scripts/rolling-restart.lua \
  "$L" -- "$ids" 2 >"$WORK/wrk.out" &
wrk_pid=$!
sleep 10
for i in $(seq "$REPLICAS"); do
  name=$PROJECT-replica-$i
  t0=$(date +%s%N)
  docker stop -t 40 "$name" >/dev/null  # SIGTERM: /ready 503, in-flight work ends, exit
  log "replica $i stopped $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGTERM"
  docker start "$name" >/dev/null
  for _ in $(seq 120); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ] && break
    sleep 1
  done
  test "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy
  docker kill -s HUP "$PROJECT-nginx-1" >/dev/null  # re-resolve `replica` (its address)
  log "replica $i healthy again $(( ($(date +%s%N) - t0) / 1000000000 )) s after; nginx reloaded"
  sleep 10
done
wait $wrk_pid
grep -E "Latency|Req/Sec|requests in|Requests/sec|Non-2xx|Socket" "$WORK/wrk.out" || true
$PY scripts/rolling_check.py "$WORK/wrk.out" "$L" "$CONNECTIONS" "$ids"
log "ROLLING RESTART PASSED"
