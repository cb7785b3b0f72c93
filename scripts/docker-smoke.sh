#!/usr/bin/env bash
# Smoke test of the real deployment (scripts/docker-local.sh builds and starts it):
#   scripts/docker-smoke.sh            (as root; about 6 minutes; SMOKE_KEEP=1 keeps it all)
# Calls /ready, next-word and a session on the app; on the replicas, a session fed through
# nginx (round robin, so both serve it) that survives restarting them. Then removes
# everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-local.sh
source scripts/docker-local.sh
docker_up
# -- the app ---------------------------------------------------------------------------------
J='content-type: application/json'
sid_of() { $PY -c 'import json,sys; print(json.load(sys.stdin)["session_id"])'; }
field() { $PY -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
curl -fsS "$B/ready"; echo
curl -fsS "$B/v1/next-word" -H "$J" \
  -d '{"text": "one thousand two hundred five, one thousand two hundred six,", "top_k": 3}'; echo
sid=$(curl -fsS "$B/v1/sessions" -H "$J" -d '{"text": "two thousand one,"}' | sid_of)
curl -fsS "$B/v1/sessions/$sid/continuation" -H "$J" -d '{"max_words": 6}'; echo
test "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$B/v1/sessions/$sid")" = 204
test "$(curl -s -o /dev/null -w '%{http_code}' "$B/v1/next-word" -H "$J" -d '{"text": "eleventy"}')" = 422
# the pages and their assets come from the image itself (no CDN)
for page in / /docs /redoc /assets/docs/swagger-ui-bundle.js /assets/docs/redoc.standalone.js \
    /assets/playground/playground.js; do
  curl -fsS -o /dev/null "$B$page"
done
log "user in the container: $(compose exec -T app id -un)"

# -- the replicas behind nginx, sessions in Redis ----------------------------------------------
sid=$(curl -fsS "$L/v1/sessions" -H "$J" -d '{}' | sid_of)
for word in one thousand two hundred seven ,; do  # round robin: both replicas take part
  curl -fsS "$L/v1/sessions/$sid/next-word" -H "$J" -d "{\"text\": \"$word\"}" >/dev/null
done
for i in 1 2; do
  n=$(compose exec -T --index "$i" replica python -c 'import urllib.request, re; t = urllib.request.urlopen("http://127.0.0.1:8000/metrics").read().decode(); print(int(sum(float(v) for v in re.findall(r"http_requests_total\{method=\"POST\",route=\"/v1/sessions/\{session_id\}/next-word\",status=\"200\"\} (\S+)", t))))')
  log "replica $i served $n of the session's requests"
  test "$n" -gt 0
done
log "restarting the replicas (and nginx, which resolved their addresses at its start)"
compose restart replica nginx >/dev/null
compose up -d --wait --wait-timeout 300 >/dev/null
seen=$(curl -fsS "$L/v1/sessions/$sid" | field tokens_seen)
test "$seen" = 6
whole=$(curl -fsS "$L/v1/next-word" -H "$J" -d '{"text": "one thousand two hundred seven ,", "top_k": 40}')
fed=$(curl -fsS "$L/v1/sessions/$sid/next-word" -H "$J" -d '{"text": "", "top_k": 40}')
$PY - "$whole" "$fed" <<'PYEOF'
import json, sys
whole, fed = (json.loads(a) for a in sys.argv[1:3])
a = {w["word"]: w["prob"] for w in whole["next"]}
b = {w["word"]: w["prob"] for w in fed["next"]}
assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)
print("session fed through nginx to both replicas, kept across their restart: tokens_seen",
      fed["tokens_seen"], "and the distribution of the whole text")
PYEOF
log "SMOKE TEST PASSED"
