#!/usr/bin/env bash
# The GPU machine's checks, in one run: the CUDA tests, the GPU benchmark, the suite on DEVICE
# cuda, and the default checkpoints' training timed on each device. Never part of CI (CI has
# no GPU); docs/benchmarks.md ("On a GPU") has the figures of its last run.
#
#   scripts/gpu-check.sh [OUT]      # logs into OUT (default: $OUT, else /tmp/gpu-check)
#   PARTS="suite" SUITE="tests/app/api tests/app/serving" scripts/gpu-check.sh
#
# PARTS: which of tests, bench, train, suite run (all by default); SUITE: the suite's groups,
# one per line, run in order while the time lasts (default: the four below); BUDGET: the
# seconds from the start that the suite may last until (default 560), each group begun with
# 30 s or more of it left; BENCH_PARTS: the benchmark's --parts (default step,engine,http).
#
# Its python3 must hold a CUDA build of torch. Packages it lacks may come as wheels in .whl/
# and programs (wrk, redis-server) in .devbin/bin/, as the workplace's GPU tool carries them
# (see its README); elsewhere install the project (`pip install -e '.[dev]'`) and wrk.
# Each step has its own time limit, so that one stuck step does not take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu-check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# torch's CPU threads: its default (every core) in three processes at once stalled the CUDA
# tests' CPU training for minutes on 16 cores (the run of 2026-12-04); 4 each leaves room.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
start=$(date +%s)
since() { echo "[$(($(date +%s) - start)) s] $*"; }
# `took LABEL CMD...`: run CMD, then print LABEL, its exit status and its wall time
took() {
  local label=$1 t0 rc
  shift
  t0=$(date +%s%N)
  "$@"
  rc=$?
  echo "$label: exit $rc, $((($(date +%s%N) - t0) / 1000000)) ms"
}

if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
[ -d .devbin/bin ] && export PATH=$PWD/.devbin/bin:$PATH
# gru-copy's C step for this Python (the CPU side of the comparisons); optional, as in setup.py
timeout 60 $PY setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || echo "no C step built" >>"$OUT/build.log"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c 'import torch, platform; print(platform.python_version(), torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
  nproc; free -g | head -2
  $PY -c 'import model_store.copy_step as c; print("C step:", c.KERNEL)'
} >"$OUT/env.txt" 2>&1
since "environment ready" | tee -a "$OUT/env.txt"

PARTS=${PARTS:-tests bench train suite}
part() { [[ " $PARTS " == *" $1 "* ]]; }

# The GPU tests, alone.
if part tests; then
  TEST_DEVICE=cuda timeout 240 $PY -m pytest -p no:cacheprovider -vv -rfEs --durations=6 \
    tests/app/test_cuda.py >"$OUT/tests-cuda.log" 2>&1
  since "CUDA tests: exit $?" | tee -a "$OUT/tests-cuda.log"
fi

# The benchmark serves .devstore where it was carried (the checkpoints the CPU machine's
# figures come from), else the default checkpoints trained here.
if part bench; then
  STORE=.devstore
  if [ ! -d "$STORE" ]; then
    STORE=/tmp/gpu-store
    $PY -m training train-all --store "$STORE" --device cpu --no-progress >/dev/null 2>&1
  fi
  timeout 300 $PY -m benchmarks.gpu --store "$STORE" --duration 4 --rounds 3 \
    --parts "${BENCH_PARTS:-step,engine,http}" >"$OUT/bench.log" 2>&1
  since "benchmark: exit $?" | tee -a "$OUT/bench.log"
fi

# The default checkpoints' training timed on each device, both at once (and beside the suite
# below): the CPU's with one thread, as `make run` trains them.
if part train; then
  (took "train-all on cuda" timeout 300 \
    $PY -m training train-all --store /tmp/cuda-store --device cuda --no-progress) \
    >"$OUT/train.log" 2>&1 &
  (took "train-all on the CPU, one thread" timeout 300 \
    $PY -m training train-all --store /tmp/cpu-store --device cpu --threads 1 --no-progress) \
    >"$OUT/train-cpu.log" 2>&1 &
fi

# The device's paths through the rest of the suite on DEVICE cuda, most telling first, each
# group while the time lasts (the GPU machine's lease is short): the engine and the models, the
# recorded answers and the official client, the API, then serving and training.
SUITE=${SUITE:-"tests/app/engine tests/model_store
tests/app/test_golden.py tests/app/test_openai_client.py tests/app/test_server.py
tests/app/api
tests/app/serving tests/training"}
if part suite; then
  : >"$OUT/suite.log"
  while IFS= read -r group; do
    left=$((${BUDGET:-560} - ($(date +%s) - start)))
    if [ "$left" -lt 30 ]; then
      since "not run (no time left): $group" | tee -a "$OUT/suite.log"
      continue
    fi
    # shellcheck disable=SC2086  # the group is several paths
    TEST_DEVICE=cuda timeout "$left" $PY -m pytest -p no:cacheprovider -rfEs $group \
      >>"$OUT/suite.log" 2>&1
    since "suite on cuda, $group: exit $?" | tee -a "$OUT/suite.log"
  done <<<"$SUITE"
fi
wait
if part train; then
  cat "$OUT/train-cpu.log" >>"$OUT/train.log" && rm "$OUT/train-cpu.log"
fi
since "done"
