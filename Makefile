# The two commands of the README: `make run` (set up, train what the store lacks, serve)
# and `make test`.
PYTHON ?= python3
VENV ?= .venv
STORE ?= store
BIN := $(VENV)/bin

.PHONY: setup run train test lint clean

$(BIN)/.installed: pyproject.toml setup.py model_store/_copy_kernel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# the variants with no checkpoint in the store (all four on a fresh clone; a first run stopped
# while training finishes on the next)
train: setup
	$(BIN)/python -m training train-all --missing --store $(STORE)

run: train
	$(BIN)/python -m app --store $(STORE)  # HOST, PORT and the rest from the environment

test: setup
	@command -v redis-server >/dev/null || { \
		echo "the tests start their own redis-server: apt-get install -y redis-server"; exit 1; }
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/docker-compose -f docker-compose.yml config -q
	$(BIN)/docker-compose -f docker-compose.yml -f docker-compose.cpu.yml config -q
	$(BIN)/docker-compose -f docker-compose.yml -f docker-compose.cpu.yml --profile scale config -q
	$(BIN)/docker-compose -f docker-compose.yml -f docker-compose.cpu.yml --profile scale --profile monitoring config -q
	@command -v promtool >/dev/null || { \
		echo "make lint checks the Prometheus config with promtool: apt-get install -y prometheus"; exit 1; }
	promtool check config deploy/prometheus/prometheus.yml
	bash -n scripts/docker-local.sh scripts/docker-smoke.sh scripts/rolling-restart.sh scripts/gpu-check.sh
	$(BIN)/python scripts/k8s_validate.py  # deploy/k8s rendered, validated strictly

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
