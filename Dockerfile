# The next-word service. CUDA build of torch by default (what PyPI serves);
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   a CPU build
#   --build-arg WHEELHOUSE=/wheels      air-gapped: only the wheels put in docker/wheels/
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ARG WHEELHOUSE=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/wheels/ /wheels/
# offline: pip of this stage reads only the wheelhouse (the final stage has no pip config)
RUN if [ -n "$WHEELHOUSE" ]; then \
        printf '[global]\nfind-links = %s\nno-index = true\n' "$WHEELHOUSE" > /etc/pip.conf; \
    fi \
 && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# a C compiler for gru-copy's C step (setup.py; optional: without one, or where apt cannot
# reach its mirror, the package builds without it and serves the step with torch)
# hadolint ignore=DL3008
RUN (apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev) \
    || echo "no C compiler: gru-copy's C step is not built (model_store.copy_step.KERNEL False)"
# torch first and alone: the largest layer, and the one the index choice is about
# (torch 2.13 needs setuptools >= 77.0.3; Debian's is 66)
RUN pip install setuptools==80.9.0 wheel==0.45.1 \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install torch==2.13.0; \
    fi
# then the dependencies, from pyproject.toml alone (stub packages), so code edits reuse it
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
RUN mkdir app model_store training \
 && touch app/__init__.py model_store/__init__.py training/__init__.py \
 && pip install --no-build-isolation . \
 && pip uninstall -y human-numbers-lm \
 && rm -rf app model_store training
# and the code itself
COPY app/ app/
COPY model_store/ model_store/
COPY training/ training/
# (the stubs' build/ must go: setuptools would keep their newer files over the real ones)
RUN rm -rf build ./*.egg-info \
 && pip install --no-deps --no-build-isolation . \
 && python -c "import app.main, training.cli" \
 && python -c "from model_store.copy_step import KERNEL; print('gru-copy C step built:', KERNEL)" \
 && python -c "from app.pages import DOCS_ASSETS as d, PLAYGROUND as p; \
assert all(f.is_file() for f in (d / 'swagger-ui-bundle.js', d / 'redoc.standalone.js', p / 'index.html', p / 'playground.js')), 'page assets missing'" \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="human-numbers-lm" \
      org.opencontainers.image.description="Next-word service for the Human Numbers GRU models"
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /srv --shell /usr/sbin/nologin app \
 && mkdir -p /models /srv \
 && chown app:app /models /srv
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STORE=/models \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /srv
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/ready\", timeout=2)"]
ENTRYPOINT ["python", "-m", "app"]
