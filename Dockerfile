# syntax=docker/dockerfile:1

# ledgerlink image: one uvicorn process per container (scale with replicas).
# The same image runs the API (`ledgerlink serve`), the worker
# (`ledgerlink worker`) and the migration Job (`ledgerlink migrate`);
# migrations are never run from the entrypoint (see docs/OPERATIONS.md).

# Both stages must share one interpreter: the venv built in the first stage
# points at /usr/local/bin/python3.11 of this exact image.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, from the lock file only: this layer is reused until
# pyproject.toml or uv.lock change, however often the code changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself. It stays an editable install on purpose: the code
# finds alembic.ini and migrations/ beside the service/ package
# (service/migrate.py), which a wheel in site-packages would break.
COPY README.md LICENSE alembic.ini ./
COPY service/ ./service/
COPY migrations/ ./migrations/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -m compileall -q service migrations

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="ledgerlink" \
      org.opencontainers.image.description="Sage 50 -> OpenCRM payment-status sync service"

# Fixed numeric uid/gid so Kubernetes can verify runAsNonRoot.
RUN groupadd --system --gid 10001 ledgerlink \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ledgerlink

WORKDIR /app

# Everything stays root-owned and read-only to the app user; nothing in the
# image is written at run time (the root filesystem may be mounted read-only).
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/service /app/service
COPY --from=builder /app/migrations /app/migrations
COPY --from=builder /app/alembic.ini /app/alembic.ini

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LEDGERLINK_HOST=0.0.0.0 \
    LEDGERLINK_PORT=8000 \
    LEDGERLINK_LOG_FORMAT=json

USER 10001:10001

# 8000: the API (`serve`); 9464: /metrics and /healthz of `ledgerlink worker`.
EXPOSE 8000 9464

# The slim image has no curl; the standard library is enough. Only meaningful
# for `ledgerlink serve`: compose disables it for the worker and migrate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LEDGERLINK_PORT', '8000'), timeout=4)"]

CMD ["ledgerlink", "serve"]
